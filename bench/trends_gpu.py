"""GPU-machine run of the trend detectors (issue #13): the real tensor-core canary's device
latency, the real NVML backend, the real trends component, and a real co-running load.

    python3 -m bench.trends_gpu --out $OUT/trends-gpu.json [--trace-out $OUT/trace.txt]

1. baseline: ``--baseline`` canary rounds every ``--period`` s on an idle GPU (the device
   round trip of each round is the latency sample; the trace is written for ``bench.trends
   --trace``);
2. load: a bf16 torch matmul loop starts in another process (the same child as bench.sdc);
   rounds go on until the ``trends/canary-latency`` condition reports ``LatencyDrift`` (or
   ``--max-loaded`` rounds), and the JSON records after how many loaded rounds, the latency
   ratio, and the likely cause the component read from NVML at that moment (clock-event
   reasons, violation time, clocks, utilisation, processes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from bench.sdc import MATMUL_CHILD
from sidecar.canary.worker.runners.tensor_core import TensorCoreRunner
from sidecar.core.values import CheckResult
from sidecar.gpu.backend import GpuSample
from sidecar.gpu.real import RealNvmlBackend
from sidecar.trends.component import TrendComponent
from sidecar.trends.config import TrendsConfig
from sidecar.trends.tracker import COND_LATENCY


class NvmlSamples:
    """The trends component's GPU view, read from the real NVML backend on demand."""

    def __init__(self, backend: RealNvmlBackend, uuid: str) -> None:
        self.backend, self.uuid = backend, uuid
        self.last: GpuSample | None = None

    def refresh(self) -> None:
        self.last = self.backend.sample(self.uuid)

    def latest_samples(self) -> Mapping[str, tuple[float, GpuSample]]:
        return {self.uuid: (time.time(), self.last)} if self.last is not None else {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    runner = TensorCoreRunner()
    info = runner.load()
    backend = RealNvmlBackend()
    system = backend.open()
    uuid = backend.devices()[0].uuid
    gpu = NvmlSamples(backend, uuid)
    gpu.refresh()
    with tempfile.TemporaryDirectory() as state:
        comp = TrendComponent(
            TrendsConfig(latency_enabled=True),
            registry=CollectorRegistry(),
            state_dir=Path(state),
            gpu_samples=gpu,
        )
        trace: list[float] = []

        def one_round() -> CheckResult:
            runner.infer()
            latency = runner.last_device_s
            trace.append(latency)
            comp.observe(
                [CheckResult.passed("canary/latency", value=latency, labels={"runner": "tensor-core"})]
            )
            gpu.refresh()
            results = asyncio.run(comp.evaluate(0.0))
            return next(r for r in results if r.name == COND_LATENCY)

        for _ in range(args.baseline):
            one_round()
            time.sleep(args.period)
        base = list(trace)
        out: dict[str, Any] = {
            "command": " ".join(sys.argv),
            "gpu": uuid,
            "driver": system.driver_version,
            "runner": info.detail,
            "baseline_rounds": len(base),
            "baseline_p50_us": statistics.median(base) * 1e6,
            "baseline_cv_pct": statistics.pstdev(base) / statistics.mean(base) * 100,
        }
        child = subprocess.Popen(
            [sys.executable, "-c", MATMUL_CHILD, str(args.load_seconds), "0.5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            ready = json.loads(child.stdout.readline() or "{}")
            if "ready" not in ready:
                raise RuntimeError("matmul child did not start (torch with CUDA?)")
            threading.Thread(target=lambda: list(child.stdout or []), daemon=True).start()
            loaded: list[float] = []
            found: CheckResult | None = None
            for i in range(args.max_loaded):
                r = one_round()
                loaded.append(trace[-1])
                if r.reason == "LatencyDrift":
                    found = r
                    out["drift_after_loaded_rounds"] = i + 1
                    break
                time.sleep(args.period)
            sample = gpu.last
            out["loaded_p50_us"] = statistics.median(loaded) * 1e6
            out["loaded_over_baseline"] = statistics.median(loaded) / statistics.median(base)
            out["drift"] = (
                None
                if found is None
                else {
                    "message": found.message,
                    "cause": found.labels.get("cause"),
                    "value": found.value,
                }
            )
            if sample is not None:
                out["nvml_at_detection"] = {
                    "clock_event_reasons": sample.clock_event_reasons,
                    "power_violation_s": sample.power_violation_s,
                    "thermal_violation_s": sample.thermal_violation_s,
                    "sm_clock_mhz": sample.sm_clock_mhz,
                    "sm_clock_max_mhz": sample.sm_clock_max_mhz,
                    "utilization_gpu_pct": sample.utilization_gpu_pct,
                    "temperature_c": sample.temperature_c,
                    "processes": len(sample.processes) if isinstance(sample.processes, tuple) else None,
                }
        finally:
            child.kill()
            child.wait(10)
        if args.trace_out:
            Path(args.trace_out).write_text("\n".join(f"{x:.9f}" for x in base) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.trends_gpu")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--trace-out", type=Path)
    ap.add_argument("--baseline", type=int, default=400)
    ap.add_argument("--period", type=float, default=0.02)
    ap.add_argument("--max-loaded", type=int, default=300)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    args = ap.parse_args(argv)
    out = run(args)
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
