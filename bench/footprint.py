"""Benchmarks 2 and 3: the cost of one ``probe`` invocation, and the serving footprint.

- ``probe``: wall time and CPU time (user+sys of the child, from ``wait4``) of
  ``python -m sidecar probe -addr=... -service=liveness`` against a running sidecar, next to two
  floors: ``python -c pass`` and ``python -c 'import grpc'``.
- footprint: ``serve --simulate`` on its demo default (default intervals, demo scenario): time
  from the exec to ``startup`` SERVING and to ``readiness`` SERVING (polled with a Check on a
  fresh connection every 5 ms), then idle CPU of the serving process and of each child (the
  canary worker) over N seconds, RSS of each, and thread counts.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import procs
from bench.loadgen import percentiles, pin

DEMO_SCENARIO = procs.REPO / "demo" / "scenario.example.yaml"


def _time_cmd(argv: list[str], cpus: set[int] | None) -> tuple[float, float, int]:
    """(wall ms, CPU ms, exit code) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=procs.REPO, preexec_fn=pin(cpus)
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - t0) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, (usage.ru_utime + usage.ru_stime) * 1000, proc.returncode


def _summ(samples: list[tuple[float, float, int]]) -> dict[str, Any]:
    walls = [w for w, _, _ in samples]
    cpu = [c for _, c, _ in samples]
    return {
        "n": len(samples),
        "wall_ms_p50": statistics.median(walls),
        "wall_ms_max": max(walls),
        "cpu_ms_p50": statistics.median(cpu),
        "exit_codes": sorted({rc for _, _, rc in samples}),
    }


def probe_cost(*, quick: bool) -> dict[str, Any]:
    srv_cpus, gen_cpus = procs.cpus()
    n = 5 if quick else 20
    out: dict[str, Any] = {}
    py = sys.executable
    floors = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import grpc'": [py, "-c", "import grpc"],
    }
    for label, argv in floors.items():
        _time_cmd(argv, gen_cpus)  # warm the page cache
        out[label] = _summ([_time_cmd(argv, gen_cpus) for _ in range(n)])
    srv = procs.start_sidecar(srv_cpus)
    try:
        has_probe = (procs.REPO / "sidecar" / "probe").is_dir()
        if has_probe:
            argv = [py, "-m", "sidecar", "probe", f"-addr={srv.addr}", "-service=liveness"]
            _time_cmd(argv, gen_cpus)
            out["python -m sidecar probe"] = _summ([_time_cmd(argv, gen_cpus) for _ in range(n)])
        else:
            out["python -m sidecar probe"] = {"skipped": "sidecar/probe absent"}
    finally:
        srv.stop()
    for label, r in out.items():
        if "skipped" in r:
            print(f"  {label}: {r['skipped']}")
        else:
            print(
                f"  {label:28s} wall p50 {r['wall_ms_p50']:6.1f} ms (max {r['wall_ms_max']:6.1f}), "
                f"CPU p50 {r['cpu_ms_p50']:6.1f} ms, exit {r['exit_codes']}",
                flush=True,
            )
    return out


def footprint(*, quick: bool) -> dict[str, Any]:
    srv_cpus, gen_cpus = procs.cpus()
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)  # the poller stays off the server's core
    idle_s = 10 if quick else 60
    args = ["--scenario", str(DEMO_SCENARIO)] if DEMO_SCENARIO.exists() else []
    srv = procs.start_sidecar(srv_cpus, *args, wait=False)
    out: dict[str, Any] = {"idle_seconds": idle_s, "scenario": str(DEMO_SCENARIO.name) if args else ""}
    try:
        procs.wait_for(lambda: procs.health_check(srv.addr, "startup", 0.2) == 1, 30)
        out["startup_serving_s"] = time.monotonic() - srv.started
        try:
            procs.wait_for(lambda: procs.health_check(srv.addr, "readiness", 0.2) == 1, 30)
            out["readiness_serving_s"] = time.monotonic() - srv.started
        except TimeoutError:
            out["readiness_serving_s"] = None
        # settle: let start-up work (worker load, first checks) finish
        time.sleep(2 if quick else 5)
        kids = procs.children(srv.pid)
        c0 = {p: procs.cpu_seconds(p) for p in [srv.pid, *kids]}
        t0 = time.monotonic()
        time.sleep(idle_s)
        elapsed = time.monotonic() - t0
        c1 = {p: procs.cpu_seconds(p) for p in [srv.pid, *kids] if Path(f"/proc/{p}").exists()}
        out["serving"] = {
            "pid": srv.pid,
            "idle_cpu_pct": (c1[srv.pid] - c0[srv.pid]) / elapsed * 100,
            "rss_mb": procs.rss_mb(srv.pid),
            "threads": procs.threads(srv.pid),
        }
        out["children"] = [
            {
                "pid": p,
                "cmd": Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120],
                "idle_cpu_pct": (c1[p] - c0[p]) / elapsed * 100,
                "rss_mb": procs.rss_mb(p),
            }
            for p in kids
            if p in c1
        ]
    finally:
        srv.stop()
        if gen_cpus:
            os.sched_setaffinity(0, (srv_cpus or set()) | gen_cpus)
    s = out["serving"]
    print(
        f"  startup SERVING {out['startup_serving_s']:.3f} s, readiness SERVING "
        f"{out['readiness_serving_s'] if out['readiness_serving_s'] is None else round(out['readiness_serving_s'], 3)} s"
    )
    print(
        f"  serving process: idle CPU {s['idle_cpu_pct']:.2f} % of a core over {idle_s} s, "
        f"RSS {s['rss_mb']:.1f} MB, {s['threads']} threads"
    )
    for c in out["children"]:
        print(
            f"  child {c['pid']}: idle CPU {c['idle_cpu_pct']:.2f} %, RSS {c['rss_mb']:.1f} MB "
            f"({c['cmd'][:60]})"
        )
    return out


__all__ = ["footprint", "percentiles", "probe_cost"]
