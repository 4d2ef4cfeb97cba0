"""Real NVML on a real GPU: every supported signal is read, unsupported ones are unmonitored.

Run on the GPU machine: ``python3 -m pytest -m gpu -s tests/gpu/test_nvml_real.py``.
Prints a table of every signal per GPU and the NVML call latencies.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import fields
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.values import Severity
from sidecar.gpu.backend import SIGNALS, SignalError, Unsupported
from sidecar.gpu.component import GpuComponent
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.real import RealNvmlBackend
from sidecar.testing import RecordingSink

pytestmark = pytest.mark.gpu
pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (pynvml) is not installed")


@pytest.fixture(scope="module")
def backend() -> RealNvmlBackend:
    b = RealNvmlBackend()
    try:
        b.open()
    except Exception as exc:  # no driver here: skip with NVML's own text
        pytest.skip(f"NVML not usable on this machine: {exc}")
    return b


def test_real_backend_reads_every_signal(backend: RealNvmlBackend) -> None:
    """Every signal of every GPU is a value or UNSUPPORTED (unmonitored), never an error;
    the core ones (temperature, memory, compute mode) are supported on a data-centre GPU."""
    infos = backend.devices()
    assert infos, "NVML sees no GPU"
    for info in infos:
        t0 = time.perf_counter()
        s = backend.sample(info.uuid)
        sample_ms = (time.perf_counter() - t0) * 1e3
        t0 = time.perf_counter()
        inforom = backend.validate_inforom(info.uuid)
        inforom_ms = (time.perf_counter() - t0) * 1e3
        print(f"\nGPU {info.index} {info.uuid} {info.name} pci={info.pci_bus_id} mig={info.mig_enabled}")
        print(f"  sample (all signals) {sample_ms:.3f} ms; inforom {inforom_ms:.1f} ms -> {inforom!r}")
        print(f"  {'signal':24} value")
        errors = []
        for name in SIGNALS:
            value = getattr(s, name)
            if isinstance(value, Unsupported):
                shown = "UNMONITORED (NOT_SUPPORTED)"
            elif isinstance(value, SignalError):
                shown = f"ERROR {value.reason}: {value.message}"
                errors.append(name)
            else:
                shown = repr(value)
            print(f"  {name:24} {shown}")
        assert not errors, f"signals failed with errors (not unsupported): {errors}"
        assert isinstance(s.temperature_c, int) and 0 < s.temperature_c < 120
        assert not isinstance(s.memory, Unsupported | SignalError) and s.memory.total > 0
        assert isinstance(s.compute_mode, int)
    assert {f.name for f in fields(s)} >= set(SIGNALS)


def test_real_events_register(backend: RealNvmlBackend) -> None:
    """Xid / ECC events register on every GPU (or are reported unsupported, never an error)."""
    regs = backend.register_events([i.uuid for i in backend.devices() if not i.lost])
    for reg in regs:
        print(
            f"\n{reg.uuid}: registered 0x{reg.registered:x} unsupported 0x{reg.unsupported:x} "
            f"error={reg.error!r}"
        )
        assert not reg.error
    backend.wait_event(0.05)  # a real event may be pending; it must not raise


async def test_component_on_real_gpu_is_healthy(tmp_path: Path, backend: RealNvmlBackend) -> None:
    """GpuComponent(simulate=False) on a healthy GPU: nvml OK, inventory OK, every GPU
    condition produced, none gating readiness; NVML call latencies printed."""
    registry = CollectorRegistry()
    comp = GpuComponent(
        GpuConfig(poll_interval_s=1.0),
        simulate=False,
        scenario=None,
        registry=registry,
        state_dir=tmp_path,
    )
    sink = RecordingSink()
    await comp.start(sink)
    try:
        deadline = time.monotonic() + 10
        while "gpu/inventory" not in sink.latest:
            assert time.monotonic() < deadline, f"no results: {sink.latest}"
            await asyncio.sleep(0.01)
        inforom = next(c for c in comp.checks() if c.name == "gpu/inforom")
        sink.submit(await inforom.run())
        print()
        for name in sorted(sink.latest):
            r = sink.latest[name]
            print(f"  {name:60} {r.status.value:7} {r.severity.name:8} {r.reason:22} {r.message}")
        assert sink.latest["nvml"].ok
        assert sink.latest["gpu/inventory"].ok
        for uuid in comp.gpu_uuids():
            for signal in ("lost", "xid", "ecc", "remap", "recovery_action", "thermal", "memory"):
                assert f"gpu/{uuid}/{signal}" in sink.latest
        gating = [r for r in sink.latest.values() if not r.ok and r.severity >= Severity.CRITICAL]
        assert not gating, f"a healthy GPU should not gate readiness: {gating}"
        assert comp.listener_alive
        for op in ("open", "devices", "sample", "inforom"):
            count = registry.get_sample_value("trt_health_nvml_call_seconds_count", {"op": op})
            total = registry.get_sample_value("trt_health_nvml_call_seconds_sum", {"op": op})
            if count:
                print(f"  nvml op {op:8} n={count:.0f} mean={1e3 * (total or 0) / count:.3f} ms")
        print(f"  exclusive_process={comp.exclusive_process()} busy={comp.busy()}")
    finally:
        await comp.stop()
