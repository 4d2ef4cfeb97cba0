"""The rollback state machine of one engine (pure: the clock is passed in, no I/O).

Fed with :class:`~sidecar.actions.evidence.EngineEvidence` and the GPU blame, it decides
whether the main server should be pinned to the last good version, or released to the
version on the volume once that one verifies. Rules (``docs/actions.md``):

- a GPU-level fault never rolls an engine back (nothing is decided while one is active) and
  never marks a version failed;
- a version that failed on this GPU is never served again until it changes (its fingerprint:
  the version and the declared sha256);
- a call that fails is retried with exponential backoff, at most ``max_attempts`` times, then
  the machine stops and reports (``RollbackGaveUp``) until the engine on the volume changes;
- more than ``max_rollbacks`` rollbacks within ``flap_window`` is a flapping pair: the next one
  is not made (``RollbackFlapping``) until the window has passed since the last one;
- a latency regression (the new version's median probe latency over ``latency_ratio`` times
  the previous good version's on this GPU) fails the version like a verification fault.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

from sidecar.actions.config import RollbackSettings
from sidecar.actions.evidence import EngineEvidence

ROLLBACK = "rollback"
RELEASE = "release"
DEGRADE = "degrade"
RESTORE = "restore"


@dataclass(frozen=True, slots=True)
class Decision:
    """One action to take. ``target`` is the version to pin the server to; None releases any
    pin (the server serves what its repository holds)."""

    kind: str
    engine: str
    target: str | None
    previous: str | None
    evidence: str


@dataclass
class Attempts:
    """Bounded attempts with exponential backoff."""

    initial_s: float
    max_s: float
    limit: int
    count: int = 0
    next_at: float = float("-inf")

    def ready(self, now: float) -> bool:
        return self.count < self.limit and now >= self.next_at

    def exhausted(self) -> bool:
        return self.count >= self.limit

    def failed(self, now: float) -> None:
        self.count += 1
        self.next_at = now + min(self.max_s, self.initial_s * (2 ** (self.count - 1)))

    def reset(self) -> None:
        self.count, self.next_at = 0, float("-inf")


@dataclass
class _Latency:
    samples: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, version: str, seconds: float) -> None:
        self.samples.setdefault(version, deque(maxlen=64)).append(seconds)

    def median(self, version: str | None, n: int) -> float | None:
        got = self.samples.get(version or "")
        if got is None or len(got) < n:
            return None
        return statistics.median(got)


class RollbackMachine:
    def __init__(self, engine: str, settings: RollbackSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.goods: list[str] = []  # versions verified on this GPU, oldest first
        self.good_fps: dict[str, str] = {}  # their fingerprints when they verified
        self.current: str | None = None
        self.current_fp = ""
        self.failed: dict[str, tuple[str, str]] = {}  # version -> (fingerprint, why)
        self.pinned: str | None = None  # what the server is pinned to by us (None: no pin)
        self.gpu_fault: str | None = None
        self.blocked: str | None = None  # an engine fault seen while the GPU was at fault
        self.attempts = Attempts(settings.backoff_initial_s, settings.backoff_max_s, settings.max_attempts)
        self.gave_up_fp: str | None = None
        self.rollbacks: deque[float] = deque()
        self.flapping_since: float | None = None
        self.latency = _Latency()

    def retune(self, settings: RollbackSettings) -> None:
        """New settings (a reload); the state stays."""
        self.settings = settings
        a = self.attempts
        a.initial_s, a.max_s, a.limit = (
            settings.backoff_initial_s,
            settings.backoff_max_s,
            settings.max_attempts,
        )

    # -- evidence -------------------------------------------------------------------------

    def update(self, ev: EngineEvidence, gpu_fault: str | None) -> None:
        self.gpu_fault = gpu_fault
        if ev.version is None:
            return
        if ev.fingerprint != self.current_fp:
            self.current, self.current_fp = ev.version, ev.fingerprint
            if self.gave_up_fp is not None and self.gave_up_fp != ev.fingerprint:
                self.gave_up_fp = None
                self.attempts.reset()
        known = self.failed.get(ev.version)
        if known is not None and known[0] != ev.fingerprint:
            del self.failed[ev.version]  # it changed: it may be tried again
        self.blocked = ev.fault if gpu_fault is not None else None
        if gpu_fault is not None:
            return  # blame the GPU: the engine is neither marked failed nor good
        if ev.fault is not None:
            if ev.fault.startswith("engine/") and self.good_fps.get(ev.version) == ev.fingerprint:
                # the file of an engine that verified here fails under an unchanged manifest
                # (replaced mid-rollout, or corrupted on the volume): not a bad *new* version,
                # nothing to roll back from; the engine conditions report it. Its canary
                # failing (canary/engine/...) or a latency regression still counts.
                return
            self.failed[ev.version] = (ev.fingerprint, f"{ev.fault}: {ev.detail}".strip(": "))
        elif ev.verified and ev.version not in self.failed:
            if ev.version in self.goods:
                self.goods.remove(ev.version)
            self.goods.append(ev.version)
            self.good_fps[ev.version] = ev.fingerprint
            for old in self.goods[:-8]:
                self.good_fps.pop(old, None)
            del self.goods[:-8]

    @property
    def good(self) -> str | None:
        """The last good version: the newest verified one that has not failed since."""
        for v in reversed(self.goods):
            if v not in self.failed:
                return v
        return None

    def latency_sample(self, seconds: float) -> None:
        """A probe latency of the version the server serves now (not while pinned)."""
        if self.current is None or self.pinned is not None or self.gpu_fault is not None:
            return
        self.latency.add(self.current, seconds)
        s = self.settings
        if s.latency_ratio <= 1.0 or self.current in self.failed:
            return
        previous = self._previous_good()
        new = self.latency.median(self.current, s.latency_min_samples)
        old = self.latency.median(previous, s.latency_min_samples)
        if previous is None or new is None or old is None or old <= 0:
            return
        if new > s.latency_ratio * old:
            why = (
                f"LatencyRegression: median {new * 1e3:.2f} ms vs {old * 1e3:.2f} ms of version "
                f"{previous} on this GPU (ratio {new / old:.2f} > {s.latency_ratio:g})"
            )
            self.failed[self.current] = (self.current_fp, why)

    def _previous_good(self) -> str | None:
        for v in reversed(list(self.latency.samples)):
            if v != self.current and v not in self.failed:
                return v
        return None

    # -- decisions ------------------------------------------------------------------------

    def status(self) -> tuple[str, str]:
        """(reason, message) of the engine's rollback state; reason "" is "nothing to do"."""
        cur = self.current
        if self.gpu_fault is not None and (self.blocked or cur in self.failed):
            return "GpuFaultNoRollback", (
                f"GPU-level fault ({self.gpu_fault}): no engine rollback ({self.blocked or 'failed'})"
            )
        wanted = cur is not None and cur in self.failed and self.good not in (None, cur, self.pinned)
        if self.flapping_since is not None and wanted:
            return "RollbackFlapping", (
                f"{len(self.rollbacks)} rollbacks within {self.settings.flap_window_s:g}s; stopped"
            )
        if self.gave_up_fp is not None and wanted:
            return "RollbackGaveUp", f"{self.attempts.count} calls failed; stopped until the engine changes"
        if cur is not None and cur in self.failed:
            if self.good is None:
                return "NoGoodVersion", f"version {cur} failed ({self.failed[cur][1]}); no good version known"
            if self.pinned == self.good:
                return (
                    "RolledBack",
                    f"serving version {self.good}; version {cur} failed: {self.failed[cur][1]}",
                )
            return "RollbackPending", f"version {cur} failed: {self.failed[cur][1]}"
        return "", f"version {cur or 'unknown'}" + (f" (pinned to {self.pinned})" if self.pinned else "")

    def decide(self, now: float) -> Decision | None:
        if self.gpu_fault is not None or self.current is None:
            return None
        self._expire_flapping(now)
        if self.flapping_since is not None or self.gave_up_fp is not None:
            return None
        cur = self.current
        if cur in self.failed:
            if self.good is None or self.good == cur or self.pinned == self.good:
                return None
            kind, target, why = ROLLBACK, self.good, self.failed[cur][1]
        elif self.pinned is not None and self.good == cur:
            kind, target, why = RELEASE, None, f"version {cur} verified on this GPU"
        else:
            return None
        if not self.attempts.ready(now):
            return None
        if kind == ROLLBACK:
            self._trim(now)
            if len(self.rollbacks) >= self.settings.max_rollbacks:
                self.flapping_since = now
                return None
        return Decision(kind, self.engine, target, cur if self.pinned is None else self.pinned, why)

    def done(self, decision: Decision, ok: bool, now: float) -> None:
        if ok:
            self.pinned = decision.target
            self.attempts.reset()
            if decision.kind == ROLLBACK:
                self.rollbacks.append(now)
            return
        self.attempts.failed(now)
        if self.attempts.exhausted():
            self.gave_up_fp = self.current_fp

    def _trim(self, now: float) -> None:
        while self.rollbacks and now - self.rollbacks[0] > self.settings.flap_window_s:
            self.rollbacks.popleft()

    def _expire_flapping(self, now: float) -> None:
        if self.flapping_since is None:
            return
        last = self.rollbacks[-1] if self.rollbacks else self.flapping_since
        if now - last > self.settings.flap_window_s:
            self.flapping_since = None
            self._trim(now)
