"""The GPU component reads time only through its injected clock: a rule that takes minutes (the
Xid report window, the hardware-slowdown sustain time) is tested by driving the clock."""

from __future__ import annotations

from pathlib import Path

from sidecar.gpu.backend import CLOCKS_HW_SLOWDOWN
from sidecar.testing import SteppableClock
from sidecar.testing.gpu import U0, Harness, fast_config, gpu


async def test_a_process_xid_warning_ends_when_the_clock_passes_the_report_window(tmp_path: Path) -> None:
    clock = SteppableClock()
    h = Harness(tmp_path, fast_config(xid_report_window_s=300.0), clock=clock)
    h.write({"gpus": [gpu(0)]})
    try:
        await h.start()
        await h.healthy(f"gpu/{U0}/xid")
        h.write({"gpus": [gpu(0, xid=[31])]})
        await h.reason(f"gpu/{U0}/xid", "XidProcess31")
        await h.poll()
        assert h.sink.latest[f"gpu/{U0}/xid"].reason == "XidProcess31"  # still inside the window
        clock.advance(301.0)
        await h.poll()
        r = h.sink.latest[f"gpu/{U0}/xid"]
        assert r.ok and r.reason == "", r.message
    finally:
        await h.stop()


async def test_hardware_slowdown_warns_once_sustained_by_the_clock(tmp_path: Path) -> None:
    clock = SteppableClock()
    h = Harness(tmp_path, fast_config(thermal_sustain_s=30.0), clock=clock)
    h.write({"gpus": [gpu(0, temperature_c=50, clock_event_reasons=CLOCKS_HW_SLOWDOWN)]})
    try:
        await h.start()
        await h.healthy(f"gpu/{U0}/thermal")
        clock.advance(29.0)
        await h.poll()
        assert h.sink.latest[f"gpu/{U0}/thermal"].ok
        clock.advance(1.5)
        await h.poll()
        assert h.sink.latest[f"gpu/{U0}/thermal"].reason == "ClocksHwSlowdown"
    finally:
        await h.stop()
