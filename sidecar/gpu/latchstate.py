"""Fatal GPU latches as values: what one GPU holds, and the changes a fold decides.

Pure (no I/O, no clock, no lock): :class:`sidecar.gpu.tracker.GpuTracker` decides changes
against a snapshot of one GPU's :class:`GpuLatchState` and computes its results from
:func:`apply_all`'s outcome; :class:`sidecar.gpu.latches.LatchStore` applies the same changes
through the same functions to what it persists, so the two never disagree.

The order of evidence (see :mod:`sidecar.gpu.latches`): a reset clears only the latches set at
or before the baseline sample (``Observed.at``); none when that time is unknown (fail closed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Latch:
    """One sticky fatal finding on one GPU."""

    kind: str  # "xid", "ecc", "remap", "lost"
    reason: str  # e.g. "XidFatal79", "EccUncorrectable"
    message: str
    scope: str = "gpu"  # "gpu" or "node"
    code: int = 0  # the Xid, when kind == "xid"
    since: float = 0.0  # wall time (for a finding of a sample: when that sample was taken)


@dataclass(frozen=True, slots=True)
class Observed:
    """Last values seen for one GPU: the baselines that make a reset observable."""

    volatile_uncorrected: int | None = None
    volatile_corrected: int | None = None
    reset_count: int | None = None
    recovery_action: int | None = None
    at: float | None = None  # wall time the sample showing these values was taken


@dataclass(frozen=True, slots=True)
class GpuLatchState:
    """One GPU's latches and reset baseline (a value: changes make a new one)."""

    latches: tuple[Latch, ...] = ()
    observed: Observed = Observed()

    def of_kind(self, kind: str) -> Latch | None:
        return next((x for x in self.latches if x.kind == kind), None)


# --- changes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddLatch:
    """Latch a finding unless one of the same kind and reason is held."""

    latch: Latch


@dataclass(frozen=True, slots=True)
class RemoveLatch:
    """Drop the latches of ``kind`` (of that ``reason`` only, when given)."""

    kind: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ClearOnReset:
    """A reset was observed against the current baseline: clear what it may clear."""


@dataclass(frozen=True, slots=True)
class ObserveSample:
    """A sample taken at wall time ``at`` becomes the new baseline (only the named values)."""

    at: float | None
    values: tuple[tuple[str, int | None], ...] = ()

    @classmethod
    def of(cls, at: float | None = None, **values: int | None) -> ObserveSample:
        return cls(at, tuple(values.items()))


LatchChange = AddLatch | RemoveLatch | ClearOnReset | ObserveSample


@dataclass(frozen=True, slots=True)
class Applied:
    """The state after some changes; ``dirty`` when the file should be rewritten."""

    state: GpuLatchState
    dirty: bool = False
    added: tuple[Latch, ...] = ()
    cleared: tuple[Latch, ...] = ()


def _same(a: Latch, b: Latch) -> bool:
    return a.kind == b.kind and a.reason == b.reason


def add_latch(st: GpuLatchState, latch: Latch) -> Applied:
    if any(_same(x, latch) for x in st.latches):
        return Applied(st)
    return Applied(replace(st, latches=(*st.latches, latch)), dirty=True, added=(latch,))


def remove_latch(st: GpuLatchState, kind: str, reason: str | None = None) -> Applied:
    keep = tuple(x for x in st.latches if not (x.kind == kind and reason in (None, x.reason)))
    gone = tuple(x for x in st.latches if x not in keep)
    return Applied(replace(st, latches=keep), dirty=bool(gone), cleared=gone)


def clear_latches(st: GpuLatchState, *, before: float | None = None) -> Applied:
    """All latches (``before`` None: the node rebooted), or those set at or before ``before``."""
    cleared = tuple(x for x in st.latches if before is None or x.since <= before)
    keep = tuple(x for x in st.latches if x not in cleared)
    return Applied(replace(st, latches=keep), dirty=bool(cleared), cleared=cleared)


def clear_on_reset(st: GpuLatchState) -> Applied:
    at = st.observed.at
    return clear_latches(st, before=-math.inf if at is None else at)


def observe(st: GpuLatchState, at: float | None, values: Iterable[tuple[str, int | None]]) -> Applied:
    obs = st.observed
    changed: dict[str, Any] = {k: v for k, v in values if getattr(obs, k) != v}
    dirty = bool(changed)
    if at is not None and (obs.at is None or at > obs.at):
        # persisted when it changes what a reset may clear (not at every poll)
        dirty |= any(obs.at is None or x.since > obs.at for x in st.latches)
        changed["at"] = at
    if not changed:
        return Applied(st)
    return Applied(replace(st, observed=replace(obs, **changed)), dirty=dirty)


def apply_change(st: GpuLatchState, change: LatchChange) -> Applied:
    if isinstance(change, AddLatch):
        return add_latch(st, change.latch)
    if isinstance(change, RemoveLatch):
        return remove_latch(st, change.kind, change.reason)
    if isinstance(change, ClearOnReset):
        return clear_on_reset(st)
    return observe(st, change.at, change.values)


def apply_all(st: GpuLatchState, changes: Iterable[LatchChange]) -> Applied:
    dirty = False
    added: list[Latch] = []
    cleared: list[Latch] = []
    for change in changes:
        step = apply_change(st, change)
        st = step.state
        dirty |= step.dirty
        added.extend(step.added)
        cleared.extend(step.cleared)
    return Applied(st, dirty=dirty, added=tuple(added), cleared=tuple(cleared))
