"""simulate=False on a machine without a GPU / driver: constructs, starts, fails closed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.values import CheckStatus, Severity
from sidecar.gpu.component import GpuComponent
from sidecar.gpu.config import GpuConfig
from sidecar.testing import RecordingSink, await_until

pynvml = pytest.importorskip("pynvml")


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


@pytest.mark.skipif(_nvml_works(), reason="this machine has a working NVML driver")
async def test_real_backend_without_driver_reports_nvml_unavailable(tmp_path: Path) -> None:
    """The real backend with no libnvidia-ml -> nvml FAIL CRITICAL NvmlUnavailable with NVML's
    text; start() returns at once; it never falls back to simulation."""
    registry = CollectorRegistry()
    comp = GpuComponent(
        GpuConfig(nvml_call_timeout_s=1.0),
        simulate=False,
        scenario=None,
        registry=registry,
        state_dir=tmp_path,
    )
    assert comp.backend.kind == "nvml"
    sink = RecordingSink()
    await asyncio.wait_for(comp.start(sink), timeout=10)  # a hang guard, not a measurement
    r = await await_until(lambda: sink.latest.get("nvml"), what="nvml result")
    assert r.status is CheckStatus.FAIL and r.severity is Severity.CRITICAL
    assert r.reason in ("NvmlUnavailable", "DriverNotLoaded")
    assert "Library Not Found" in r.message or "Driver Not Loaded" in r.message
    assert "readiness" in r.gates and comp.gpu_fault()
    assert registry.get_sample_value("trt_health_nvml_up") == 0
    # the poll retries init every tick and keeps reporting the reason
    poll = next(c for c in comp.checks() if c.name == "gpu")
    [again] = await poll.run()
    assert again.reason == r.reason
    await comp.stop()
