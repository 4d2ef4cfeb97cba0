"""The latch store never holds its state lock across file I/O: a save blocked in fsync (a slow
or hung state volume) leaves the event loop free to read and change latches, and a change made
during that write is not lost (the store stays dirty until a write includes it)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from sidecar.gpu.latches import Latch, LatchStore

WAIT_S = 5.0


def test_accessors_do_not_wait_for_a_save_stuck_in_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "gpu.json"
    store = LatchStore(path, boot_id="b1")
    store.load()
    store.add("GPU-a", Latch("remap", "RemapFailure", "x", since=1.0))
    in_fsync = threading.Event()
    release = threading.Event()
    real_fsync = os.fsync

    def stuck_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(60.0)  # longer than the accessors are given
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", stuck_fsync)
    saver = threading.Thread(target=store.save, name="saver")
    saver.start()
    try:
        assert in_fsync.wait(WAIT_S), "the save never reached fsync"
        done = threading.Event()

        def loop_side() -> None:  # what the event loop does while the volume hangs
            store.add("GPU-a", Latch("xid", "XidFatal79", "y", since=2.0))
            store.observe("GPU-a", at=3.0, reset_count=0)
            store.latches("GPU-a")
            store.all_latches()
            store.health()
            done.set()

        other = threading.Thread(target=loop_side, name="loop-side")
        other.start()
        answered = done.wait(WAIT_S)
    finally:
        release.set()
        saver.join(WAIT_S)
    other.join(WAIT_S)
    assert answered, "a latch accessor waited for the fsync of a save"
    monkeypatch.setattr(os, "fsync", real_fsync)
    # the write in flight held the old snapshot; the Xid latched meanwhile reaches the file
    on_disk = LatchStore(path, boot_id="b1")
    on_disk.load()
    assert [x.reason for x in on_disk.latches("GPU-a")] == ["RemapFailure"]
    store.save()
    again = LatchStore(path, boot_id="b1")
    again.load()
    assert sorted(x.reason for x in again.latches("GPU-a")) == ["RemapFailure", "XidFatal79"]
    assert again.gpu("GPU-a").observed.at == 3.0


def test_concurrent_saves_leave_the_newest_state(tmp_path: Path) -> None:
    """Saves from the listener thread and a worker thread interleave with changes: the file
    ends with every latch added before the last save started."""
    path = tmp_path / "gpu.json"
    store = LatchStore(path)
    store.load()
    savers = [threading.Thread(target=store.save) for _ in range(4)]
    for i, t in enumerate(savers):
        store.add(f"GPU-{i}", Latch("lost", "GpuLost", "gone", scope="node", since=float(i)))
        t.start()
    for t in savers:
        t.join(WAIT_S)
    store.save()
    again = LatchStore(path)
    again.load()
    assert sorted(again.all_latches()) == [f"GPU-{i}" for i in range(4)]
