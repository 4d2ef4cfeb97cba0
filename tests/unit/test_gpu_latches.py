"""The persisted latch store: atomic JSON, reload, reboot detection, broken files reported."""

from __future__ import annotations

import json
from pathlib import Path

from sidecar.gpu.latches import Latch, LatchStore


def test_latches_round_trip(tmp_path: Path) -> None:
    """A latch and the observed counters survive a new store on the same file."""
    path = tmp_path / "state" / "gpu.json"
    store = LatchStore(path, boot_id="b1")
    assert store.add("GPU-a", Latch("xid", "XidFatal79", "fell off", scope="node", code=79))
    assert not store.add("GPU-a", Latch("xid", "XidFatal79", "again"))  # no duplicates
    store.observe("GPU-a", volatile_uncorrected=2, reset_count=0)
    store.save()
    assert not list(path.parent.glob(".gpu.json.*"))  # no temp file left behind
    again = LatchStore(path, boot_id="b1")
    again.load()
    [latch] = again.latches("GPU-a")
    assert latch.reason == "XidFatal79" and latch.scope == "node" and latch.code == 79
    assert again.gpu("GPU-a").observed.volatile_uncorrected == 2
    assert not again.rebooted() and again.problem is None


def test_reboot_detected_from_boot_id(tmp_path: Path) -> None:
    """A file written under another boot id means the node rebooted since."""
    path = tmp_path / "gpu.json"
    store = LatchStore(path, boot_id="b1")
    store.add("GPU-a", Latch("ecc", "EccUncorrectable", "x"))
    store.save()
    later = LatchStore(path, boot_id="b2")
    later.load()
    assert later.rebooted()


def test_broken_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """Invalid JSON or a wrong version -> empty state and a reported problem."""
    path = tmp_path / "gpu.json"
    for text in ("{broken", json.dumps({"version": 99})):
        path.write_text(text)
        store = LatchStore(path)
        store.load()
        assert store.problem is not None and store.all_latches() == {}


def test_unwritable_dir_is_a_problem(tmp_path: Path) -> None:
    """A state path whose parent is a file -> save() records a problem instead of raising."""
    (tmp_path / "file").write_text("x")
    store = LatchStore(tmp_path / "file" / "gpu.json")
    store.add("GPU-a", Latch("remap", "RemapFailure", "x"))
    store.save()
    assert store.problem is not None and "not writable" in store.problem


def test_clear_returns_cleared(tmp_path: Path) -> None:
    """clear() drops every latch of one GPU only."""
    store = LatchStore(tmp_path / "gpu.json")
    store.add("GPU-a", Latch("xid", "XidGpuReset48", "x"))
    store.add("GPU-b", Latch("xid", "XidGpuReset48", "x"))
    assert [x.reason for x in store.clear("GPU-a")] == ["XidGpuReset48"]
    assert store.latches("GPU-a") == [] and len(store.latches("GPU-b")) == 1
