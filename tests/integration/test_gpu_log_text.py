"""Cosmetic truths of the GPU layer's words (issue #9 item 9)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.gpu.process_conditions import nvml_ok
from sidecar.testing.gpu import U0, Harness, fast_config, gpu


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, fast_config())
    harness.write({})
    yield harness
    await harness.stop()


def test_simulated_driver_is_said_simulated_once() -> None:
    """`driver 580.00 (simulated)`, not `(simulated) (simulated)`; a real one names its backend."""
    assert nvml_ok("580.00 (simulated)", "simulated").message == "NVML reachable, driver 580.00 (simulated)"
    assert nvml_ok("580.65.06", "nvml").message == "NVML reachable, driver 580.65.06 (nvml)"


async def test_xid_without_mig_instance_logs_none(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """An Xid on a GPU without MIG is logged with gi=none ci=none, not 4294967295."""
    caplog.set_level(logging.INFO, logger="sidecar.gpu.component")
    await h.start()
    await h.healthy(f"gpu/{U0}/xid")
    h.write({"gpus": [gpu(0, xid=[79])]})
    await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    (rec,) = [r for r in caplog.records if r.getMessage() == "Xid event"]
    assert vars(rec)["gi"] == "none" and vars(rec)["ci"] == "none"
