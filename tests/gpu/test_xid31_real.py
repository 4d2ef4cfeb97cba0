"""A real Xid 31 reaches the real listener, is process-level, and shows in the metrics.

A child process (never this one: the test process must not initialise CUDA; the program is
``sidecar.testing.xid31``) compiles a kernel with NVRTC that writes to address 0x10, launches
it and synchronises (error 700, CUDA_ERROR_ILLEGAL_ADDRESS). The driver reports Xid 31 (MMU
fault) through NVML to the sidecar's listener. Prints the latency from the child's failing
sync to (a) the listener receiving the event and (b) the Xid counter changing in the metrics.

Run on the GPU machine: ``python3 -m pytest -m gpu -s tests/gpu/test_xid31_real.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.values import Severity
from sidecar.gpu.component import GpuComponent
from sidecar.gpu.config import GpuConfig
from sidecar.testing import RecordingSink, xid31

pytestmark = pytest.mark.gpu
pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (pynvml) is not installed")


def _xid31_total(registry: CollectorRegistry, uuids: list[str]) -> float:
    total = 0.0
    for uuid in uuids:
        v = registry.get_sample_value(
            "trt_health_gpu_xid_events_total", {"uuid": uuid, "code": "31", "class": "process"}
        )
        total += v or 0.0
    return total


async def test_real_xid31_is_process_level_and_counted(tmp_path: Path) -> None:
    """Xid 31 from a child's illegal-address kernel: received by the listener, classified
    process-level (WARNING XidProcess31, readiness unchanged), counted in the metrics."""
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        pytest.skip(f"NVML not usable on this machine: {exc}")

    registry = CollectorRegistry()
    comp = GpuComponent(
        GpuConfig(poll_interval_s=1.0, event_wait_timeout_s=0.2),
        simulate=False,
        scenario=None,
        registry=registry,
        state_dir=tmp_path,
    )
    sink = RecordingSink()
    await comp.start(sink)
    try:
        deadline = time.monotonic() + 10
        while not (comp.listener_alive and "gpu/inventory" in sink.latest):
            assert time.monotonic() < deadline, f"listener not started: {sink.latest}"
            await asyncio.sleep(0.01)
        uuids = comp.gpu_uuids()
        for uuid in uuids:
            events = sink.latest.get(f"gpu/{uuid}/events")
            assert events is not None and events.ok and events.reason != "Unmonitored", events
        before = _xid31_total(registry, uuids)
        gating_before = {r.name for r in sink.latest.values() if not r.ok and r.severity >= Severity.CRITICAL}

        child = subprocess.Popen(  # noqa: ASYNC220 - started once, then polled without blocking
            xid31.command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        counter_changed_at: float | None = None
        deadline = time.monotonic() + 60
        exited_at: float | None = None
        # poll the metric every 0.2 ms on the event loop, as a scrape would see it; stop 3 s
        # after the child exited if nothing came
        while time.monotonic() < deadline:
            if _xid31_total(registry, uuids) > before:
                counter_changed_at = time.time()
                break
            if exited_at is None and child.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > 3.0:
                break
            await asyncio.sleep(0.0002)
        out, err = await asyncio.to_thread(child.communicate, None, 30)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        assert lines, f"child printed nothing useful; rc={child.returncode} stderr={err[-2000:]}"
        report = json.loads(lines[-1])
        if "skip" in report:
            pytest.skip(report["skip"])
        print(f"\nchild: {report}")
        assert report["sync_error"] == 700, f"expected CUDA_ERROR_ILLEGAL_ADDRESS, got {report}"
        assert counter_changed_at is not None, "Xid 31 never reached the metrics"

        hit = [(uuid, rec) for uuid, recs in comp.recent_xids().items() for rec in recs if rec.code == 31]
        assert hit, "the listener has no record of Xid 31"
        uuid, rec = hit[-1]
        sync = report["sync_returned"]
        print(f"Xid 31 on {uuid}")
        print(f"  launch -> failing sync returned : {1e3 * (sync - report['launch']):8.2f} ms")
        print(f"  failing sync -> listener got it : {1e3 * (rec.wall - sync):8.2f} ms")
        print(f"  failing sync -> counter changed : {1e3 * (counter_changed_at - sync):8.2f} ms")

        xid = sink.latest[f"gpu/{uuid}/xid"]
        print(f"  result: {xid.status.value} {xid.severity.name} {xid.reason} {xid.message}")
        assert xid.reason == "XidProcess31" and xid.severity is Severity.WARNING
        gating_after = {r.name for r in sink.latest.values() if not r.ok and r.severity >= Severity.CRITICAL}
        assert gating_after == gating_before, "a process-level Xid must not change readiness"
        assert not comp.latches.latches(uuid), "a process-level Xid must not latch"
        # the event reached the metrics within a second of the fault being reported
        assert counter_changed_at - sync < 1.0
    finally:
        await comp.stop()
