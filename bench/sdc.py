"""GPU-machine benchmark of the tensor-core SDC canary (issue #12). Needs a real GPU.

    python3 -m bench.sdc --out docs/gpu-runs/sdc-<date>.json [--budget-s 360]

Parts (each prints progress; a failing part prints its error and the next one runs):

1. ``coverage``: rounds at the default grid; distinct SMs per first launch and per round, extra
   launches needed, per-round cost (input generation, device round trip, CPU golden + compare);
2. ``grid``: first-launch coverage and device time for 1, 2, 4, 8, 16 blocks per SM;
3. ``injection``: >= 100 rounds with one bit flipped in one SM's result (random SM, bit, path):
   detected, attributed to the right SM, right bit (xor mask), right path;
4. ``clean``: up to 10,000 clean rounds (time-bounded; the count is reported): false alarms,
   rounds with incomplete coverage, worst coverage;
5. ``interference``: a bf16 torch matmul loop in another process, throughput per window,
   canary off and on in alternating phases at each period (side by side, one run);
6. ``wgmma`` (experimental, never in the screen): whether NVRTC builds a Hopper
   ``wgmma.mma_async`` bf16 kernel and which descriptor variant gives the exact golden.

The JSON written to ``--out`` holds every number and the command line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.canary import sdc
from sidecar.canary.worker.runners.tensor_core import (
    INJECTION_ENV,
    SimulatedTensorCoreDevice,
    TensorCoreRunner,
)

MATMUL_CHILD = r"""
import json, sys, time, torch
seconds, window = float(sys.argv[1]), float(sys.argv[2])
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(10):
    a @ b
torch.cuda.synchronize()
print(json.dumps({"ready": time.monotonic()}), flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.monotonic(); iters = 0
    while time.monotonic() - t0 < window:
        for _ in range(4):
            c = a @ b
        torch.cuda.synchronize()
        iters += 4
    t1 = time.monotonic()
    print(json.dumps({"t0": t0, "t1": t1, "tflops": iters * 2 * n**3 / (t1 - t0) / 1e12}), flush=True)
"""


def log(msg: str) -> None:
    print(f"[bench.sdc {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100.0 * len(s)))]


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def part_coverage(runner: TensorCoreRunner, rounds: int, budget: Budget) -> dict[str, Any]:
    first_cov: list[int] = []
    round_cov: list[int] = []
    launches: list[int] = []
    gen_us: list[float] = []
    dev_us: list[float] = []
    judge_us: list[float] = []
    total_us: list[float] = []
    bad = 0
    sms = runner.devs[0].sms
    for i in range(rounds):
        if budget.left() < 0:
            break
        t0 = time.perf_counter()
        out = runner.infer()
        t1 = time.perf_counter()
        verdicts = sdc.judge_round(out)
        t2 = time.perf_counter()
        for v in verdicts:
            smid = out[f"{sdc.OUT_SMID}@{v.ordinal}"]
            first_cov.append(len(set(int(x) for x in np.unique(smid[0]))))
            round_cov.append(v.covered)
            launches.append(v.meta.launches)
            bad += int(v.corrupt or bool(v.problem))
            if v.corrupt or v.problem:
                log(f"  round {i}: {v.describe()[:400]}")
        gen_us.append(runner.last_gen_s * 1e6)
        dev_us.append(runner.last_device_s * 1e6)
        judge_us.append((t2 - t1) * 1e6)
        total_us.append((t2 - t0) * 1e6)
    res = {
        "rounds": len(round_cov),
        "sms": sms,
        "blocks_per_launch": runner.devs[0].blocks,
        "first_launch_coverage_min": min(first_cov, default=0),
        "first_launch_coverage_p50": pct([float(x) for x in first_cov], 50),
        "round_coverage_min": min(round_cov, default=0),
        "rounds_full_coverage": sum(1 for c in round_cov if c == sms),
        "rounds_needing_extra_launch": sum(1 for n in launches if n > 1),
        "max_launches": max(launches, default=0),
        "mismatch_or_problem_rounds": bad,
        "gen_us_p50": pct(gen_us, 50),
        "device_round_trip_us_p50": pct(dev_us, 50),
        "device_round_trip_us_p99": pct(dev_us, 99),
        "judge_us_p50": pct(judge_us, 50),
        "total_round_us_p50": pct(total_us, 50),
        "total_round_us_p99": pct(total_us, 99),
    }
    log(f"coverage: {json.dumps(res)}")
    return res


def part_grid(ordinal: int, budget: Budget, rounds: int = 60) -> dict[str, Any]:
    """First-launch coverage and cost per grid size: what ``blocks_per_sm`` should be."""
    out: dict[str, Any] = {}
    for bps in (1, 2, 4, 8, 16):
        if budget.left() < 10:
            out[str(bps)] = {"error": "budget"}
            continue
        r = TensorCoreRunner((ordinal,), blocks_per_sm=bps)
        r.load()
        try:
            sms = r.devs[0].sms
            first: list[int] = []
            launches: list[int] = []
            dev_us: list[float] = []
            for _ in range(rounds):
                o = r.infer()
                smid = o[f"{sdc.OUT_SMID}@{ordinal}"]
                first.append(len(np.unique(smid[0])))
                launches.append(int(smid.shape[0]))
                dev_us.append(r.last_device_s * 1e6)
            out[str(bps)] = {
                "blocks": r.devs[0].blocks,
                "first_launch_full_coverage": sum(1 for f in first if f >= sms),
                "first_launch_coverage_min": min(first),
                "rounds": rounds,
                "max_launches": max(launches),
                "device_us_p50": pct(dev_us, 50),
            }
        finally:
            r.close()
        log(f"  grid blocks_per_sm={bps}: {json.dumps(out[str(bps)])}")
    return out


def part_injection(runner: TensorCoreRunner, count: int, budget: Budget, seed: int) -> dict[str, Any]:
    rnd = random.Random(seed)
    # inject on SM ids the GPU really has (%smid numbering need not be 0..SMs-1)
    first = runner.infer()
    ids = sorted(int(x) for x in np.unique(first[f"{sdc.OUT_SMID}@{runner.devs[0].ordinal}"]))
    detected = attributed = right_bit = right_path = not_exercised = 0
    failures: list[str] = []
    done = 0
    while done < count and budget.left() > 0:
        sm, bit, path = rnd.choice(ids), rnd.randrange(32), rnd.choice(sdc.PATHS)
        inj = sdc.Injection(sm, bit, path)
        out = runner.infer(gpu_fault=inj.text())
        v = sdc.judge_round(out)[0]
        smid = out[f"{sdc.OUT_SMID}@{v.ordinal}"]
        if not (smid == sm).any():
            not_exercised += 1  # the SM ran no block this round: the flip never happened
            continue
        done += 1
        ok_det = v.corrupt
        ok_sm = v.bad_sms == [sm]
        ok_bit = bool(v.mismatches) and all(m.xor == 1 << bit for m in v.mismatches)
        ok_path = bool(v.mismatches) and all(m.path == path for m in v.mismatches)
        detected += ok_det
        attributed += ok_det and ok_sm
        right_bit += ok_bit
        right_path += ok_path
        if not (ok_det and ok_sm and ok_bit and ok_path) and len(failures) < 10:
            failures.append(f"inject sm={sm} bit={bit} path={path}: {v.describe()[:300]}")
    res = {
        "sm_ids_seen": f"{len(ids)} ids, min {ids[0]}, max {ids[-1]}",
        "injections": done,
        "detected": detected,
        "attributed_to_right_sm": attributed,
        "right_xor_bit": right_bit,
        "right_path": right_path,
        "rounds_where_sm_ran_no_block": not_exercised,
        "failures": failures,
    }
    log(f"injection: {json.dumps(res)}")
    return res


def _judge_summary(out: dict[str, np.ndarray]) -> tuple[int, int, int, str]:
    """(false alarm, covered, sms, first problem) for one clean round (runs in a pool)."""
    v = sdc.judge_round(out)[0]
    alarm = int(v.corrupt or bool(v.problem))
    return alarm, v.covered, v.meta.sms, (v.describe()[:300] if alarm else "")


def part_clean(runner: TensorCoreRunner, target: int, budget: Budget, seconds: float) -> dict[str, Any]:
    end = time.monotonic() + min(seconds, budget.left())
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))
    alarms = rounds = incomplete = 0
    worst = 1 << 30
    problems: list[str] = []
    t0 = time.monotonic()
    pending: list[concurrent.futures.Future[tuple[int, int, int, str]]] = []

    def drain(block_until: int) -> None:
        nonlocal alarms, rounds, incomplete, worst
        while len(pending) > block_until:
            f = pending.pop(0)
            alarm, covered, sms, problem = f.result()
            rounds += 1
            alarms += alarm
            incomplete += covered < sms
            worst = min(worst, covered)
            if problem and len(problems) < 10:
                problems.append(problem)

    # spawn: the children only judge (numpy); they must not inherit this process's CUDA context
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        launched = 0
        while launched < target and time.monotonic() < end:
            pending.append(pool.submit(_judge_summary, runner.infer()))
            launched += 1
            drain(workers * 2)
            if launched % 1000 == 0:
                log(f"  clean: {launched} rounds launched, {alarms} alarms so far")
        drain(0)
    res = {
        "rounds": rounds,
        "target": target,
        "false_alarms": alarms,
        "rounds_with_incomplete_coverage": incomplete,
        "worst_round_coverage": worst if rounds else 0,
        "seconds": time.monotonic() - t0,
        "judge_workers": workers,
        "problems": problems,
    }
    log(f"clean: {json.dumps(res)}")
    return res


def part_interference(
    runner: TensorCoreRunner, periods: list[float], phase_s: float, phases: int, budget: Budget
) -> dict[str, Any]:
    """Per period: alternate off/on phases next to one matmul process; compare windows."""
    total = sum(phase_s * phases * 2 for _ in periods) + 30.0
    if total > budget.left():
        scale = max(0.2, (budget.left() - 30.0) / max(1.0, total - 30.0))
        phase_s *= scale
        log(f"interference: budget tight, phases shortened to {phase_s:.1f}s")
    seconds = sum(phase_s * phases * 2 for _ in periods) + 10.0
    window = max(0.25, min(1.0, phase_s / 8))
    child = subprocess.Popen(
        [sys.executable, "-c", MATMUL_CHILD, str(seconds), str(window)],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    schedule: list[tuple[float, float, str, float]] = []  # (start, end, state, period)
    rounds_on: dict[float, int] = {}
    try:
        assert child.stdout is not None
        ready = json.loads(child.stdout.readline() or "{}")
        if "ready" not in ready:
            raise RuntimeError("matmul child did not start (is torch with CUDA there?)")
        # read the child's windows as they come: a full pipe would stall the matmul loop
        reader = threading.Thread(target=lambda: lines.extend(child.stdout or []), daemon=True)
        reader.start()
        for period in periods:
            rounds_on[period] = 0
            for _ in range(phases):
                for state in ("off", "on"):
                    start = time.monotonic()
                    stop = start + phase_s
                    if state == "on":
                        nxt = start
                        while time.monotonic() < stop:
                            if time.monotonic() >= nxt:
                                runner.infer()
                                rounds_on[period] += 1
                                nxt += period
                            time.sleep(max(0.0, min(nxt, stop) - time.monotonic()))
                    else:
                        time.sleep(phase_s)
                    schedule.append((start, stop, state, period))
            log(f"  interference: period {period}s done ({rounds_on[period]} rounds on)")
    finally:
        child.terminate()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
    time.sleep(0.2)  # let the reader take the last lines
    windows = [json.loads(x) for x in list(lines) if x.startswith("{") and '"t0"' in x]
    out: dict[str, Any] = {"phase_s": phase_s, "phases_per_state": phases, "window_s": window}
    for period in periods:
        by: dict[str, list[float]] = {"on": [], "off": []}
        for w in windows:
            for start, stop, state, p in schedule:
                if p == period and w["t0"] >= start and w["t1"] <= stop:
                    by[state].append(float(w["tflops"]))
        off, on = by["off"], by["on"]
        if len(off) < 2 or len(on) < 2:
            out[str(period)] = {"error": f"too few windows (off {len(off)}, on {len(on)})"}
            continue
        m_off, m_on = statistics.mean(off), statistics.mean(on)
        se = ((statistics.variance(off) / len(off) + statistics.variance(on) / len(on)) ** 0.5) / m_off
        out[str(period)] = {
            "tflops_off_mean": m_off,
            "tflops_on_mean": m_on,
            "loss_pct": (m_off - m_on) / m_off * 100.0,
            "loss_pct_stderr": se * 100.0,
            "windows_off": len(off),
            "windows_on": len(on),
            "rounds_on": rounds_on[period],
        }
        log(f"interference period {period}s: {json.dumps(out[str(period)])}")
    return out


def part_wgmma(ordinal: int, sms: int) -> dict[str, Any]:
    from bench.sdc_wgmma import run_isolated

    res = run_isolated(ordinal, sms)
    log(f"wgmma (experimental, not in the screen): {json.dumps(res)}")
    return res


def identity() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        info["gpu"] = pynvml.nvmlDeviceGetName(h)
        info["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as exc:  # identity is informative only
        info["nvml_error"] = str(exc)
    try:
        from cuda import bindings

        info["cuda_bindings"] = getattr(bindings, "__version__", "?")
    except Exception:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="JSON results file")
    ap.add_argument("--budget-s", type=float, default=360.0, help="total time budget (default 360)")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--blocks-per-sm", type=int, default=8)
    ap.add_argument("--coverage-rounds", type=int, default=300)
    ap.add_argument("--injections", type=int, default=120)
    ap.add_argument("--clean-rounds", type=int, default=10000)
    ap.add_argument("--clean-seconds", type=float, default=150.0)
    ap.add_argument("--periods", default="5,1,0.1", help="canary periods (s) for the interference part")
    ap.add_argument("--phase-s", type=float, default=6.0)
    ap.add_argument("--phases", type=int, default=4)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument(
        "--simulate",
        type=int,
        default=0,
        metavar="SMS",
        help="smoke test without a GPU: the numpy model with this many SMs",
    )
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results: dict[str, Any] = {
        "command": " ".join(["python3 -m bench.sdc", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "identity": identity(),
    }
    os.environ[INJECTION_ENV] = "1"  # this bench is a test tool: injection is its purpose
    sim = (
        (SimulatedTensorCoreDevice(0, args.simulate, blocks_per_sm=args.blocks_per_sm),)
        if args.simulate
        else ()
    )
    runner = TensorCoreRunner(
        (args.device,), blocks_per_sm=args.blocks_per_sm, allow_injection=True, simulated=sim
    )
    try:
        t0 = time.perf_counter()
        results["load"] = {"detail": runner.load().detail, "seconds": time.perf_counter() - t0}
        log(f"loaded: {results['load']}")
    except Exception as exc:
        log(f"load failed: {exc!r}")
        results["load"] = {"error": repr(exc), "traceback": traceback.format_exc()[-2000:]}
        runner = None  # type: ignore[assignment]

    def run(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        if name in skip:
            return
        if budget.left() <= 0:
            results[name] = {"error": "time budget exhausted before this part"}
            log(f"{name}: skipped, budget exhausted")
            return
        log(f"{name}: start ({budget.left():.0f}s left)")
        try:
            results[name] = fn()
        except Exception as exc:
            log(f"{name} FAILED: {exc!r}")
            results[name] = {"error": repr(exc), "traceback": traceback.format_exc()[-2000:]}
        save()  # after every part: a run killed later keeps what it measured

    def save() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")

    if runner is not None:
        run("coverage", lambda: part_coverage(runner, args.coverage_rounds, budget))
        if not args.simulate:
            run("grid", lambda: part_grid(args.device, budget))
        run("injection", lambda: part_injection(runner, args.injections, budget, args.seed))
        run("clean", lambda: part_clean(runner, args.clean_rounds, budget, args.clean_seconds))
        periods = [float(x) for x in args.periods.split(",") if x.strip()]
        run("interference", lambda: part_interference(runner, periods, args.phase_s, args.phases, budget))
    sms = runner.devs[0].sms if runner is not None and runner.devs else 132
    if runner is not None:
        try:
            runner.close()
        except Exception as exc:
            log(f"close failed: {exc!r}")
    if not args.simulate:
        run("wgmma", lambda: part_wgmma(args.device, sms))
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(json.dumps(results, indent=1, default=str), flush=True)
    save()
    if args.out:
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
