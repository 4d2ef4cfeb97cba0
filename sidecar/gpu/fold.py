"""The values a GPU fold produces and works on (see :mod:`sidecar.gpu.tracker`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.core.values import CheckResult
from sidecar.gpu.backend import EventRegistration, GpuInfo, GpuSample
from sidecar.gpu.conditions import GpuRef
from sidecar.gpu.latchstate import GpuLatchState, Latch, LatchChange, apply_change
from sidecar.gpu.xid_conditions import XidRecord

CANARY_CHECK = "canary"
POLL_CHECK = "gpu"


@dataclass(frozen=True, slots=True)
class Note:
    """A log line the component writes for a fold (level, message, structured fields)."""

    level: int
    message: str
    extra: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Retire:
    """Conditions (and services) a GPU no longer reports; ``drop_gpu``: the GPU left with no
    latch (its store entry and metric series go too)."""

    prefixes: tuple[str, ...]
    services: tuple[str, ...]
    drop_gpu: bool


@dataclass(slots=True)
class Fold:
    """What one fold decided for one GPU."""

    uuid: str
    results: list[CheckResult] = field(default_factory=list)
    changes: list[LatchChange] = field(default_factory=list)
    latch_count: int | None = None  # the fatal-latches gauge (None: not set by this fold)
    notes: list[Note] = field(default_factory=list)
    triggers: list[str] = field(default_factory=list)
    reset: str | None = None  # evidence of a reset observed by this fold
    xid: tuple[int, str] | None = None  # an Xid counted (code, class)
    xid_ignored: int | None = None  # an Xid of another MIG instance
    retire: Retire | None = None


@dataclass(slots=True)
class GpuTrack:
    """What the tracker remembers of one GPU between samples (in memory only)."""

    info: GpuInfo
    ref: GpuRef
    last: GpuSample | None = None
    last_taken: float = 0.0  # wall time the last sample's NVML calls started
    recent: deque[XidRecord] = field(default_factory=lambda: deque(maxlen=256))
    ecc_contained: bool = False
    corrected_hist: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    replay_hist: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    hw_slowdown_since: float | None = None
    sampled: bool = False
    reset_required: str | None = None
    registration: EventRegistration | None = None


class Book:
    """A fold's working copy of one GPU's latches: each change is recorded and applied."""

    def __init__(self, state: GpuLatchState | None) -> None:
        self.state = state if state is not None else GpuLatchState()
        self.changes: list[LatchChange] = []

    def do(self, change: LatchChange) -> tuple[Latch, ...]:
        """Apply ``change``; returns the latches it added or cleared."""
        step = apply_change(self.state, change)
        self.state = step.state
        self.changes.append(change)
        return step.added or step.cleared
