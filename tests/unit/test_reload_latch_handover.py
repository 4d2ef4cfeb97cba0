"""Make-before-break for the GPU component: latches are never lost across the swap."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sidecar.components import hand_over_latches as _hand_over_latches
from sidecar.gpu.latches import Latch, LatchStore

UUID = "GPU-1"


@dataclass
class Component:
    latches: LatchStore


def _latch(reason: str, since: float) -> Latch:
    return Latch(kind="xid", reason=reason, message=reason, code=79, since=since)


def _on_disk(path: Path) -> list[str]:
    store = LatchStore(path)
    store.load()
    return sorted(x.reason for x in store.latches(UUID))


def test_latches_set_meanwhile_move_over_and_the_file_holds_the_replacements_state(tmp_path: Path) -> None:
    path = tmp_path / "gpu-latches.json"
    old = LatchStore(path)
    old.add(UUID, _latch("ClearedByReset", time.time() - 60))
    old.save()
    new = LatchStore(path)
    new.load()
    assert _on_disk(path) == ["ClearedByReset"]  # witness: the replacement read the flushed file
    new.clear(UUID)  # the replacement saw a reset: evidence, the latch is gone
    new.add(UUID, _latch("OnlyTheNewSaw", time.time()))
    new.save()
    old.add(UUID, _latch("XidFatal79", time.time()))  # the old one latched during the overlap
    old.save()  # ... and rewrote the file when it stopped
    assert _on_disk(path) == ["ClearedByReset", "XidFatal79"]
    _hand_over_latches(Component(old), Component(new))
    assert sorted(x.reason for x in new.latches(UUID)) == ["OnlyTheNewSaw", "XidFatal79"]
    assert _on_disk(path) == ["OnlyTheNewSaw", "XidFatal79"]


def test_a_latch_only_the_replacement_holds_is_rewritten_after_the_old_one_stopped(tmp_path: Path) -> None:
    path = tmp_path / "gpu-latches.json"
    old = LatchStore(path)
    old.observe(UUID, reset_count=0)
    old.save()
    new = LatchStore(path)
    new.load()
    new.add(UUID, _latch("XidFatal79", time.time()))
    new.save()
    assert _on_disk(path) == ["XidFatal79"]  # witness: persisted by the replacement
    old.observe(UUID, reset_count=1)  # the old one changed something and rewrote the file at stop
    old.save()
    assert _on_disk(path) == []
    _hand_over_latches(Component(old), Component(new))
    assert _on_disk(path) == ["XidFatal79"]


def test_a_latch_added_after_the_flush_with_older_evidence_moves_over(tmp_path: Path) -> None:
    """A latch's ``since`` is when its evidence started (an Xid's wall time, an enumeration
    time), not when it was added: one the old component added after the flush, dated before
    it, is in neither the file the replacement read nor may it be dropped."""
    path = tmp_path / "gpu-latches.json"
    old = LatchStore(path)
    old.add(UUID, _latch("XidFatal79", time.time() - 60))
    old.save()
    flushed_at = time.time()
    new = LatchStore(path)
    new.load()
    assert _on_disk(path) == ["XidFatal79"]  # witness: the replacement read the flushed file
    lost = Latch(kind="lost", reason="GpuLost", message="GPU fell off the bus", since=flushed_at - 30)
    old.add(UUID, lost)  # the old one latched during the overlap, on evidence from before the flush
    old.save()
    _hand_over_latches(Component(old), Component(new))
    assert sorted(x.reason for x in new.latches(UUID)) == ["GpuLost", "XidFatal79"]
    assert _on_disk(path) == ["GpuLost", "XidFatal79"]
