"""A latch write stuck in fsync (a slow or hung state volume) never stalls the event loop: the
listener thread saves an Xid latch, its fsync hangs, and meanwhile the loop folds the next
sample (the store's lock is not held across the write). The latch still reaches the file."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from sidecar.gpu.backend import EventType, GpuEvent
from sidecar.gpu.simulated import SimulatedBackend
from sidecar.testing import await_until
from sidecar.testing.gpu import U0, Harness, fast_config, gpu

HOLD_S = 10.0  # how long the fake fsync hangs unless released


async def test_the_loop_folds_samples_while_a_latch_write_hangs_in_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path, fast_config())
    h.write({"gpus": [gpu(0, temperature_c=40)]})
    real_fsync = os.fsync
    entered = threading.Event()
    release = threading.Event()
    done = threading.Event()

    def hung_fsync(fd: int) -> None:
        if threading.current_thread().name == "xid-listener":
            entered.set()
            release.wait(HOLD_S)
            done.set()
        real_fsync(fd)

    try:
        comp = await h.start()
        await h.healthy(f"gpu/{U0}/xid")
        assert isinstance(comp.backend, SimulatedBackend)
        monkeypatch.setattr(os, "fsync", hung_fsync)
        comp.backend.inject_event(GpuEvent(U0, int(EventType.XID_CRITICAL), 79, wall_time=time.time()))
        await await_until(entered.is_set, what="the listener's save reached fsync")
        h.write({"gpus": [gpu(0, temperature_c=41)]})  # the loop samples and folds this

        def folded() -> bool:
            latest = comp.latest_samples().get(U0)
            return latest is not None and latest[1].temperature_c == 41

        await await_until(folded, timeout=HOLD_S / 2, what="the loop folded the next sample")
        assert not done.is_set(), "the fold waited for the latch write's fsync"
    finally:
        release.set()
        await h.stop()
    doc = json.loads((h.state_dir / "gpu-latches.json").read_text())
    assert [x["reason"] for x in doc["gpus"][U0]["latches"]] == ["XidFatal79"]
