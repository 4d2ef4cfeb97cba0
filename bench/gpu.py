"""GPU-machine benchmark: the real sidecar on a real GPU (no simulation).

Measures, and writes as Markdown (``--out FILE``) plus JSON (``--json FILE``):

1. time from process start to ``startup`` SERVING and to ``readiness`` SERVING (first canary
   on the real GPU included), worker GPU memory, worker start-up, canary latency;
2. real-Xid latency: a child process launches a kernel that writes to address 0x10 (Xid 31,
   CUDA_ERROR_ILLEGAL_ADDRESS); from the child's failing stream sync to the Xid counter
   changing in ``/metrics`` and the ``gpu/<uuid>/xid`` condition changing in the diagnostics
   RPC; readiness must stay SERVING (Xid 31 is process-level);
3. interference: a bf16 matmul loop (PyTorch) in another process, TFLOP/s without the sidecar,
   with it at default settings, and with a 1 s canary period.

Run on the GPU machine (see README "Development"): ``python3 -m bench.gpu --out $OUT/gpu.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc
from sidecar.testing import start_sidecar, xid31

REPO = Path(__file__).resolve().parent.parent

MATMUL_CHILD = r"""
import json, sys, time, torch
seconds = float(sys.argv[1])
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(5):
    a @ b
torch.cuda.synchronize()
iters = 0
t0 = time.perf_counter()
while time.perf_counter() - t0 < seconds:
    for _ in range(10):
        c = a @ b
    torch.cuda.synchronize()
    iters += 10
dt = time.perf_counter() - t0
print(json.dumps({"tflops": 2 * n**3 * iters / dt / 1e12, "iters": iters, "seconds": dt}))
"""


class Sidecar:
    def __init__(self, config: str, workdir: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="config-", suffix=".yaml", dir=workdir)
        os.close(fd)
        cfg = Path(name)
        cfg.write_text(config)
        self.log = cfg.with_name(cfg.name.replace("config-", "sidecar-").replace(".yaml", ".log"))
        # ports 0: the kernel picks free ones, read back from the "sidecar started" line
        self.sp = start_sidecar(
            "--config",
            str(cfg),
            "--state-dir",
            str(cfg.with_name(cfg.stem.replace("config-", "state-"))),
            log_path=self.log,
            cwd=REPO,
            timeout=120,
        )
        self.proc = self.sp.proc
        self.t0 = self.sp.started
        self.grpc_port = self.sp.grpc_port
        self.http_port = self.sp.http_port
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}")
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.diag = diagnostics_pb2_grpc.DiagnosticsStub(self.channel)

    def status(self, service: str) -> int | None:
        try:
            return int(self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=0.5).status)
        except grpc.RpcError:
            return None

    def wait_serving(self, service: str, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"sidecar exited: {self.log.read_text()[-3000:]}")
            if self.status(service) == health_pb2.HealthCheckResponse.SERVING:
                return time.monotonic() - self.t0
            time.sleep(0.01)
        return None

    def metrics(self) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()

    def get(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        conn.request("GET", path)
        return conn.getresponse().read().decode()

    def conditions(self, prefix: str = "") -> Any:
        return self.diag.GetConditions(diagnostics_pb2.ConditionsRequest(prefix=prefix), timeout=2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.channel.close()


def metric_values(text: str, name: str) -> list[tuple[str, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name):
            m = re.match(r"^(\S+?)(\{[^}]*\})?\s+(\S+)$", line)
            if m and m.group(1) == name:
                out.append((m.group(2) or "", float(m.group(3))))
    return out


def xid31_total(text: str) -> float:
    return sum(
        v for labels, v in metric_values(text, "trt_health_gpu_xid_events_total") if 'code="31"' in labels
    )


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


def run_matmul(seconds: float) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, "-c", MATMUL_CHILD, str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": res.stderr[-1500:]}
    return dict(json.loads(lines[-1]))


def gpu_identity() -> dict[str, str]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,uuid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except OSError as exc:
        out = f"nvidia-smi unavailable: {exc}"
    return {"nvidia_smi": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--xid-injections", type=int, default=30)
    ap.add_argument("--matmul-seconds", type=float, default=12.0)
    ap.add_argument("--skip-interference", action="store_true")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **gpu_identity()}
    print(json.dumps(results), flush=True)

    # 1. start-up on the real GPU with the default config (canary runner auto)
    sc = Sidecar("{}\n", work)
    try:
        results["startup_serving_s"] = sc.wait_serving("startup", 30)
        results["readiness_serving_s"] = sc.wait_serving("readiness", 120)
        time.sleep(6)  # let a second canary run
        m = sc.metrics()
        results["canary_latency_s"] = {
            "sum": sum(v for _, v in metric_values(m, "trt_health_canary_latency_seconds_sum")),
            "count": sum(v for _, v in metric_values(m, "trt_health_canary_latency_seconds_count")),
        }
        c = results["canary_latency_s"]
        results["canary_latency_mean_ms"] = 1e3 * c["sum"] / c["count"] if c["count"] else None
        results["worker_gpu_memory_bytes"] = metric_values(m, "trt_health_canary_worker_gpu_memory_bytes")
        results["worker_startup_seconds"] = metric_values(m, "trt_health_canary_worker_startup_seconds")
        results["worker_rss_bytes"] = metric_values(m, "trt_health_canary_worker_rss_bytes")
        status = subprocess.run(
            [sys.executable, "-m", "sidecar", "status", "--addr", f"127.0.0.1:{sc.grpc_port}"],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        results["status_table"] = status.stdout
        results["healthz"] = json.loads(sc.get("/healthz"))
        print(status.stdout, flush=True)
        print(
            json.dumps(
                {
                    k: results[k]
                    for k in (
                        "startup_serving_s",
                        "readiness_serving_s",
                        "canary_latency_mean_ms",
                        "worker_gpu_memory_bytes",
                        "worker_startup_seconds",
                    )
                }
            ),
            flush=True,
        )

        # 2. real Xid 31 latency
        lat_metric: list[float] = []
        lat_diag: list[float] = []
        readiness_flips = 0
        errors: list[str] = []
        for i in range(args.xid_injections):
            before = xid31_total(sc.metrics())
            # the xid condition's message carries the event count of its window, so a new
            # event changes it even when the reason stays XidProcess31
            diag_before = {c.name: c.message for c in sc.conditions("gpu/").conditions}
            child = subprocess.Popen(
                xid31.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            seen_metric = seen_diag = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (seen_metric is None or seen_diag is None):
                # the observation time is taken after the poll returned (an upper bound)
                if seen_metric is None and xid31_total(sc.metrics()) > before:
                    seen_metric = time.time()
                if seen_diag is None:
                    for c in sc.conditions("gpu/").conditions:
                        if (
                            c.name.endswith("/xid")
                            and c.reason == "XidProcess31"
                            and c.message != diag_before.get(c.name, "")
                        ):
                            seen_diag = time.time()
                if child.poll() is not None and time.monotonic() > deadline - 25:
                    break  # the child is gone and nothing arrived within 5 s
                time.sleep(0.001)
            out, err = child.communicate(timeout=60)
            lines = [ln for ln in out.splitlines() if ln.startswith("{")]
            if not lines:
                errors.append(err[-500:])
                continue
            rep = json.loads(lines[-1])
            if seen_metric is not None:
                lat_metric.append(1e3 * (seen_metric - rep["sync_returned"]))
            if seen_diag is not None:
                lat_diag.append(1e3 * (seen_diag - rep["sync_returned"]))
            if sc.status("readiness") != health_pb2.HealthCheckResponse.SERVING:
                readiness_flips += 1
            print(
                f"xid #{i}: sync_error={rep.get('sync_error')} metric={lat_metric[-1:]} diag={lat_diag[-1:]}",
                flush=True,
            )
        results["xid31"] = {
            "injections": args.xid_injections,
            "metric_ms": {
                "p50": pct(lat_metric, 50),
                "p99": pct(lat_metric, 99),
                "max": max(lat_metric, default=float("nan")),
                "n": len(lat_metric),
            },
            "diagnostics_ms": {
                "p50": pct(lat_diag, 50),
                "p99": pct(lat_diag, 99),
                "max": max(lat_diag, default=float("nan")),
                "n": len(lat_diag),
            },
            "readiness_not_serving_after": readiness_flips,
            "errors": errors[:3],
        }
        print(json.dumps(results["xid31"]), flush=True)
        # after the injections the canary must still pass (its own worker was not affected)
        results["readiness_after_xids"] = sc.status("readiness")
    finally:
        sc.stop()

    # 3. interference
    if not args.skip_interference:
        inter: dict[str, Any] = {}
        inter["baseline"] = run_matmul(args.matmul_seconds)
        for label, cfg in (("default", "{}\n"), ("canary_1s", "canary: {interval: 1s}\n")):
            s = Sidecar(cfg, work)
            try:
                s.wait_serving("readiness", 120)
                inter[label] = run_matmul(args.matmul_seconds)
                inter[label]["sidecar_readiness"] = s.status("readiness")
            finally:
                s.stop()
        inter["baseline_again"] = run_matmul(args.matmul_seconds)
        base = statistics.mean(
            [x["tflops"] for x in (inter["baseline"], inter["baseline_again"]) if "tflops" in x]
            or [float("nan")]
        )
        for label in ("default", "canary_1s"):
            if "tflops" in inter[label]:
                inter[label]["loss_pct"] = 100 * (1 - inter[label]["tflops"] / base)
        results["interference"] = inter
        print(json.dumps(inter), flush=True)

    text = render(results)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


def render(r: dict[str, Any]) -> str:
    lines = [
        "# GPU machine results",
        "",
        f"Generated by `python3 -m bench.gpu` on {r['date']}. GPU (nvidia-smi): `{r.get('nvidia_smi')}`",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| process start → `startup` SERVING | {fmt_s(r.get('startup_serving_s'))} |",
        f"| process start → `readiness` SERVING (first real canary included) | {fmt_s(r.get('readiness_serving_s'))} |",
        f"| canary latency, mean over {r.get('canary_latency_s', {}).get('count', 0):.0f} canaries | {fmt_ms(r.get('canary_latency_mean_ms'))} |",
        f"| worker GPU memory | {fmt_metric(r.get('worker_gpu_memory_bytes'), 2**20, 'MiB')} |",
        f"| worker start-up | {fmt_metric(r.get('worker_startup_seconds'), 1, 's')} |",
        f"| worker RSS | {fmt_metric(r.get('worker_rss_bytes'), 2**20, 'MiB')} |",
    ]
    x = r.get("xid31")
    if x:
        lines += [
            f"| real Xid 31: failing sync → `/metrics` counter (p50 / p99 / max, n={x['metric_ms']['n']}) | "
            f"{x['metric_ms']['p50']:.1f} / {x['metric_ms']['p99']:.1f} / {x['metric_ms']['max']:.1f} ms |",
            f"| real Xid 31: failing sync → diagnostics RPC condition (p50 / p99 / max, n={x['diagnostics_ms']['n']}) | "
            f"{x['diagnostics_ms']['p50']:.1f} / {x['diagnostics_ms']['p99']:.1f} / {x['diagnostics_ms']['max']:.1f} ms |",
            f"| readiness NOT_SERVING after a process-level Xid 31 | {x['readiness_not_serving_after']} of {x['injections']} |",
        ]
    inter = r.get("interference")
    if inter:
        for label in ("baseline", "default", "canary_1s", "baseline_again"):
            v = inter.get(label, {})
            extra = f" (loss {v['loss_pct']:+.2f} %)" if "loss_pct" in v else ""
            lines.append(
                f"| bf16 matmul 8192³, {label} | {v.get('tflops', float('nan')):.1f} TFLOP/s{extra} |"
            )
    lines += ["", "```", r.get("status_table", "").rstrip(), "```", ""]
    return "\n".join(lines)


def fmt_s(v: Any) -> str:
    return "n/a" if v is None else f"{v:.2f} s"


def fmt_ms(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f} ms"


def fmt_metric(values: Any, scale: float, unit: str) -> str:
    if not values:
        return "n/a"
    return ", ".join(f"{v / scale:.1f} {unit}{(' ' + k) if k else ''}" for k, v in values)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
