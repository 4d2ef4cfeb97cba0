"""The canary worker on a real GPU (marker ``gpu``; run on the GPU machine with ``-s``).

    python3 -m pytest -m gpu tests/gpu/test_canary_gpu.py -s

Proves: the NVRTC kernel canary passes (prints latency p50, worker GPU memory, worker start
and time to first pass); the real lean runtime rejects garbage / truncated / foreign plans with
TensorRT's own error text; a spinning kernel is killed at the deadline and the worker
recovers; an illegal-address fault poisons only the worker; memory pressure from another
process is reported with numbers.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidecar.canary.component import CanaryComponent
from sidecar.canary.config import CanaryConfig
from sidecar.canary.metrics import CanaryMetrics
from sidecar.canary.protocol import LoadRequest
from sidecar.canary.supervisor import CanarySupervisor, SupervisorSettings
from sidecar.core.values import CheckResult
from sidecar.engine.manifest import EngineManifest, TensorSpec, dump_manifest
from sidecar.runtime.scenario import ScenarioFile

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-bindings not installed"),
    pytest.mark.skipif(
        not (Path("/dev/nvidiactl").exists() or ctypes.util.find_library("cuda")),
        reason="no NVIDIA driver on this machine",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
ENGINES = ROOT / "engines"
MIB = 1 << 20


class Sink:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def submit(self, results: Iterable[CheckResult]) -> None:
        self.results.extend(results)

    def trigger(self, check_name: str) -> None:
        pass


def component(
    tmp_path: Path, scenario: dict[str, Any] | None = None, **cfg: Any
) -> tuple[CanaryComponent, ScenarioFile | None, CollectorRegistry]:
    sf = None
    if scenario is not None:
        (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(scenario))
        sf = ScenarioFile(tmp_path / "scenario.yaml")
        sf.reload()
    reg = CollectorRegistry()
    base: dict[str, Any] = dict(
        runner="cuda-kernel",
        timeout_s=3.0,
        first_timeout_s=30.0,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
    )
    comp = CanaryComponent(
        CanaryConfig(**{**base, **cfg}),
        simulate=scenario is not None,
        scenario=sf,
        registry=reg,
        gpu_state=None,
        engines_dir=ENGINES,
    )
    return comp, sf, reg


def set_scenario(sf: ScenarioFile, doc: dict[str, Any]) -> None:
    assert sf.path is not None
    sf.path.write_text(yaml.safe_dump(doc))
    sf.reload()


async def until(
    comp: CanaryComponent, pred: Callable[[CheckResult], bool], within: float = 60.0
) -> CheckResult:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        res = await comp.run_canary()
        last = next(r for r in res if r.name == "canary")
        if pred(last):
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"not reached; last {last}")


def is_(reason: str) -> Callable[[CheckResult], bool]:
    return lambda r: r.reason == reason


def gpu_mem(reg: CollectorRegistry) -> dict[str, float]:
    out = {}
    for metric in reg.collect():
        if metric.name == "trt_health_canary_worker_gpu_memory_bytes":
            for s in metric.samples:
                out[s.labels["gpu"]] = s.value
    return out


async def test_kernel_canary_passes_on_real_gpu(tmp_path: Path) -> None:
    """The NVRTC canary passes on every visible GPU; prints the numbers the issue asks for."""
    comp, _, reg = component(tmp_path)
    t0 = time.monotonic()
    await comp.start(Sink())
    try:
        ok = await until(comp, is_("CanaryPassed"))
        first_ready = time.monotonic() - t0
        lat = []
        for _ in range(50):
            res = await comp.run_canary()
            main = next(r for r in res if r.name == "canary")
            assert main.reason == "CanaryPassed", main
            lat.append(float(main.value or 0))
        startup = reg.get_sample_value("trt_health_canary_worker_startup_seconds")
        print(
            f"\n[gpu] kernel canary: {ok.message}\n"
            f"[gpu] latency p50 {statistics.median(lat) * 1e6:.1f} us, "
            f"max {max(lat) * 1e6:.1f} us over {len(lat)} canaries\n"
            f"[gpu] worker start {startup:.3f} s, time to first pass {first_ready:.3f} s\n"
            f"[gpu] worker GPU memory (MiB by NVML index): "
            f"{ {k: round(v / MIB) for k, v in gpu_mem(reg).items()} }"
        )
        assert "cuda-kernel" in ok.labels["runner"]
    finally:
        await comp.stop()


def _plan_manifest(d: Path, name: str, data: bytes) -> Path:
    (d / f"{name}.plan").write_bytes(data)
    for f in ("golden_input.npy", "golden_output.npy"):
        (d / f).write_bytes((ENGINES / "canary" / f).read_bytes())
    m = EngineManifest(
        name=name,
        file=f"{name}.plan",
        directory=d,
        format="tensorrt-plan",
        inputs=(TensorSpec("x", "float32", (1, 16)),),
        outputs=(TensorSpec("y", "float32", (1, 8)),),
        golden_inputs={"x": "golden_input.npy"},
        golden_outputs={"y": "golden_output.npy"},
    )
    path = d / f"{name}.manifest.yaml"
    dump_manifest(m, path)
    return path


@pytest.mark.skipif(
    not any(importlib.util.find_spec(m) for m in ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")),
    reason="no TensorRT lean runtime (see GPU.md: device-wheels.sh)",
)
async def test_lean_runtime_rejects_bad_plans_with_its_own_text(tmp_path: Path) -> None:
    """Garbage, truncated and foreign-magic plans fail with TensorRT's error text; the GPU
    stays usable (a kernel canary passes right after)."""
    cases = {
        "garbage": bytes(range(256)) * 64,
        "truncated": b"ftrt" + b"\0" * 20 + bytes([11, 4, 0, 106]) + b"\x01" * 100,
        "foreign": (ENGINES / "canary" / "canary.onnx").read_bytes(),
    }
    metrics = CanaryMetrics(CollectorRegistry())
    for name, data in cases.items():
        manifest = _plan_manifest(tmp_path, name, data)
        sup = CanarySupervisor(LoadRequest("tensorrt", None, str(manifest)), SupervisorSettings(), metrics)
        t0 = time.monotonic()
        err = await sup.start()
        took = time.monotonic() - t0
        print(f"\n[gpu] {name}: {err.reason if err else None} in {took:.2f}s: {err.message if err else ''}")
        assert err is not None and err.reason == "EngineDeserializeFailed", err
        assert "TensorRT:" in err.message
        assert sup.proc is None  # replaced cleanly, nothing left behind
        await sup.stop()
    comp, _, _ = component(tmp_path)
    await comp.start(Sink())
    try:
        await until(comp, is_("CanaryPassed"))
    finally:
        await comp.stop()


async def test_spinning_kernel_killed_at_deadline_and_recovers(tmp_path: Path) -> None:
    """A real hang (spinning kernel) is SIGKILLed at the deadline; the next worker passes."""
    comp, sf, _ = component(tmp_path, scenario={"canary": {"mode": "ok"}}, timeout_s=2.0)
    assert sf is not None
    await comp.start(Sink())
    try:
        await until(comp, is_("CanaryPassed"))
        set_scenario(sf, {"canary": {"gpu_fault": "spin"}})
        t0 = time.monotonic()
        res = next(r for r in await comp.run_canary() if r.name == "canary")
        killed = time.monotonic() - t0
        assert res.reason == "CanaryTimeout", res
        set_scenario(sf, {"canary": {"mode": "ok"}})
        t1 = time.monotonic()
        await until(comp, is_("CanaryPassed"))
        print(f"\n[gpu] spin: timeout+kill {killed:.2f}s, back to pass in {time.monotonic() - t1:.2f}s")
    finally:
        await comp.stop()


async def test_illegal_address_poisons_only_the_worker(tmp_path: Path) -> None:
    """A real MMU fault (store to 0x10) is reported by CUDA name; the worker is replaced and
    passes again; the sidecar process itself never touched CUDA."""
    comp, sf, reg = component(tmp_path, scenario={"canary": {"mode": "ok"}})
    assert sf is not None
    await comp.start(Sink())
    try:
        await until(comp, is_("CanaryPassed"))
        pid = comp.supervisor.pid
        set_scenario(sf, {"canary": {"gpu_fault": "illegal_address"}})
        t0 = time.monotonic()
        res = next(r for r in await comp.run_canary() if r.name == "canary")
        print(
            f"\n[gpu] illegal address: {res.reason} {dict(res.labels)} {res.message} "
            f"({time.monotonic() - t0:.3f}s)"
        )
        assert res.labels.get("cuda_error") == "CUDA_ERROR_ILLEGAL_ADDRESS", res
        assert (
            reg.get_sample_value(
                "trt_health_canary_worker_restarts_total", {"cause": "CUDA_ERROR_ILLEGAL_ADDRESS"}
            )
            == 1
        )
        set_scenario(sf, {"canary": {"mode": "ok"}})
        await until(comp, is_("CanaryPassed"))
        assert comp.supervisor.pid != pid
        assert "cuda.bindings.driver" not in sys.modules  # CUDA only ever in the worker
    finally:
        await comp.stop()


HOG = r"""
import sys
from cuda.bindings import driver as d
assert d.cuInit(0)[0] == d.CUresult.CUDA_SUCCESS
dev = d.cuDeviceGet(0)[1]
ctx = d.cuDevicePrimaryCtxRetain(dev)[1]
d.cuCtxSetCurrent(ctx)
held = []
for chunk in (1 << 30, 1 << 26, 1 << 22):
    while True:
        err, p = d.cuMemAlloc(chunk)
        if err != d.CUresult.CUDA_SUCCESS:
            break
        held.append(p)
free, total = d.cuMemGetInfo()[1:]
print(f"ready held={sum(1 for _ in held)} free={free >> 20}MiB total={total >> 20}MiB", flush=True)
sys.stdin.read()
"""


async def test_memory_pressure_from_another_process_is_reported(tmp_path: Path) -> None:
    """With GPU 0 filled by another process the worker fails cleanly with numbers, and
    passes once the memory is back."""
    hog = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOG, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert hog.stdout is not None and hog.stdin is not None
        line = (await asyncio.wait_for(hog.stdout.readline(), 120)).decode()
        print(f"\n[gpu] memory hog: {line.strip()}")
        assert line.startswith("ready")
        comp, _, _ = component(tmp_path, devices=(0,))
        await comp.start(Sink())
        try:
            res = await until(comp, lambda r: r.reason not in ("Starting", "LoadingEngine"))
            print(f"[gpu] under pressure: {res.reason}: {res.message}")
            assert res.reason in ("InsufficientGpuMemory", "CanaryPassed"), res
            if res.reason == "InsufficientGpuMemory":
                assert "MiB" in res.message
            hog.stdin.close()
            await asyncio.wait_for(hog.wait(), 30)
            t0 = time.monotonic()
            await until(comp, is_("CanaryPassed"))
            print(f"[gpu] memory back: pass after {time.monotonic() - t0:.2f}s")
        finally:
            await comp.stop()
    finally:
        if hog.returncode is None:
            hog.kill()
            await hog.wait()
