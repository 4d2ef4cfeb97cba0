"""Cosmetic truths of the GPU layer's words (issue #9 item 9)."""

from __future__ import annotations

import logging

import pytest

from sidecar.checks.nvml import nvml_ok

from .test_gpu_component import U0, Harness, gpu, h  # noqa: F401 (fixture)


def test_simulated_driver_is_said_simulated_once() -> None:
    """`driver 580.00 (simulated)`, not `(simulated) (simulated)`; a real one names its backend."""
    assert nvml_ok("580.00 (simulated)", "simulated").message == "NVML reachable, driver 580.00 (simulated)"
    assert nvml_ok("580.65.06", "nvml").message == "NVML reachable, driver 580.65.06 (nvml)"


async def test_xid_without_mig_instance_logs_none(h: Harness, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    """An Xid on a GPU without MIG is logged with gi=none ci=none, not 4294967295."""
    caplog.set_level(logging.INFO, logger="sidecar.gpu.component")
    await h.start()
    await h.healthy(f"gpu/{U0}/xid")
    h.write({"gpus": [gpu(0, xid=[79])]})
    await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    (rec,) = [r for r in caplog.records if r.getMessage() == "Xid event"]
    assert vars(rec)["gi"] == "none" and vars(rec)["ci"] == "none"
