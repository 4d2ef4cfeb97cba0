"""The latch store fails closed: corrupt files kept aside (bounded), an unreadable file never
overwritten, the reset baseline's sample time persisted (order of evidence across a restart)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from sidecar.gpu.latches import (
    MAX_ASIDE,
    REASON_CORRUPT,
    REASON_UNREADABLE,
    Latch,
    LatchStore,
)


def test_corrupt_files_kept_aside_are_bounded(tmp_path: Path) -> None:
    """Five corrupt files in a row: the newest MAX_ASIDE are kept, the store stays corrupt."""
    path = tmp_path / "gpu.json"
    for i in range(5):
        path.write_bytes(b"\xff" + bytes([i]))
        store = LatchStore(path)
        store.load()
        store.save()
    kept = sorted(tmp_path.glob("gpu.json.corrupt-*"))
    assert len(kept) == MAX_ASIDE
    assert kept[-1].read_bytes() == b"\xff\x04"
    health = store.health()
    assert health is not None and health.reason == REASON_CORRUPT


def test_unreadable_file_is_not_overwritten_and_is_retried(tmp_path: Path) -> None:
    """A path that cannot be read (a directory, unreadable as root too) is never replaced;
    once it reads, its latches are merged and the problem clears."""
    path = tmp_path / "gpu.json"
    path.mkdir()
    store = LatchStore(path, boot_id="b1")
    store.load()
    store.add("GPU-a", Latch("xid", "XidFatal79", "x", since=1.0))
    store.save()
    health = store.health()
    assert health is not None and health.reason == REASON_UNREADABLE
    assert path.is_dir()
    path.rmdir()
    other = LatchStore(path, boot_id="b1")
    other.add("GPU-b", Latch("remap", "RemapFailure", "y", since=2.0))
    other.save()
    store.save()  # reads the file now, merges it, then writes both
    assert store.health() is None
    doc = json.loads(path.read_text())
    assert sorted(doc["gpus"]) == ["GPU-a", "GPU-b"]


def test_reset_clears_only_latches_up_to_the_persisted_baseline(tmp_path: Path) -> None:
    """Baseline sampled at t=10; a latch set at 5 is cleared by a reset seen after a restart,
    a latch set at 20 (after the baseline, maybe after the reset) is not."""
    path = tmp_path / "gpu.json"
    store = LatchStore(path)
    store.add("GPU-a", Latch("ecc", "EccUncorrectable", "old", since=5.0))
    store.observe("GPU-a", at=10.0, reset_count=0)
    store.add("GPU-a", Latch("xid", "XidFatal79", "new", since=20.0))
    store.save()
    again = LatchStore(path)
    again.load()
    assert again.gpu("GPU-a").observed.at == 10.0
    assert [x.reason for x in again.clear_on_reset("GPU-a")] == ["EccUncorrectable"]
    assert [x.reason for x in again.latches("GPU-a")] == ["XidFatal79"]


def test_version_1_file_loads_and_fails_closed_on_reset(tmp_path: Path) -> None:
    """A version 1 file (no baseline time) still loads its latches; a reset cannot be ordered
    against them, so it clears none."""
    path = tmp_path / "gpu.json"
    path.write_text(
        json.dumps(
            {
                "version": 1,
                "boot_id": "b1",
                "gpus": {
                    "GPU-a": {
                        "latches": [{"kind": "xid", "reason": "XidFatal79", "message": "m", "since": 1.0}],
                        "observed": {"reset_count": 0},
                    }
                },
            }
        )
    )
    store = LatchStore(path, boot_id="b1")
    store.load()
    assert store.health() is None
    assert store.clear_on_reset("GPU-a") == []
    assert [x.reason for x in store.latches("GPU-a")] == ["XidFatal79"]


def test_wrong_field_types_are_corrupt(tmp_path: Path) -> None:
    """A latch whose fields have the wrong type is corrupt, not a crash."""
    path = tmp_path / "gpu.json"
    bad = {"kind": "xid", "reason": ["x"], "message": "m"}
    path.write_text(json.dumps({"version": 2, "gpus": {"GPU-a": {"latches": [bad]}}}))
    store = LatchStore(path)
    store.load()
    health = store.health()
    assert health is not None and health.reason == REASON_CORRUPT and "reason" in health.message


def test_fifo_at_the_state_path_is_unreadable_not_a_hang(tmp_path: Path) -> None:
    """A FIFO where the state file should be: reported unreadable at once (the read never
    blocks) and never replaced by a save."""
    path = tmp_path / "gpu.json"
    os.mkfifo(path)
    store = LatchStore(path)
    store.load()
    store.add("GPU-a", Latch("xid", "XidFatal79", "x", since=1.0))
    store.save()
    health = store.health()
    assert health is not None and health.reason == REASON_UNREADABLE
    assert "regular file" in health.message
    assert stat.S_ISFIFO(path.stat().st_mode)
