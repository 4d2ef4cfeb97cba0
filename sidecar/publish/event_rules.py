"""Which condition transitions become which Kubernetes Event, and how many API calls they cost.

Pure (transitions and time in, decisions out; the clocks are injected):

- :class:`TransitionJudge`: every transition of a CRITICAL/FATAL condition to failing is a
  ``Warning`` Event (reason = the condition's reason, e.g. ``XidFatal79``; the GPU UUID in the
  message, a label and an annotation), and the later recovery a ``Normal`` Event with reason
  ``Recovered``. CRITICAL conditions are reported only after they were healthy once, so cold
  starts (``Starting``, ``LoadingEngine``) make no noise; FATAL ones always, also a latch
  restored when the sidecar restarts.
- :class:`SeriesBook`: repeats of the same (type, reason, condition) within
  ``aggregate_window`` fold into one Event's ``count`` instead of new Events.
- :class:`TokenBucket`: ``burst`` API calls, one more per ``refill_interval``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.core.values import Severity, Transition

REASON_RECOVERED = "Recovered"
LABEL_GPU_UUID = "trt-health.io/gpu-uuid"
LABEL_SEVERITY = "trt-health.io/severity"
ANNOTATION_CONDITION = "trt-health.io/condition"
ANNOTATION_REASON = "trt-health.io/reason"
ANNOTATION_GPU_INDEX = "trt-health.io/gpu-index"

_UUID_KEYS = ("uuid", "gpu_uuid", "gpu-uuid")
_INDEX_KEYS = ("gpu", "gpu_index", "index")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
MAX_MESSAGE = 1024
MAX_REASON = 128
MAX_SERIES = 1024  # series kept in memory; beyond, the oldest settled ones are forgotten


@dataclass(slots=True)
class Occurrence:
    """One transition worth an Event, as queued by the listener."""

    type: str  # Warning | Normal
    reason: str
    condition: str
    message: str
    at: float
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(slots=True)
class Series:
    """An Event on the API server (or about to be) and its local count."""

    occurrence: Occurrence
    first_at: float
    count: int = 1
    name: str | None = None  # set once created
    sent_count: int = 0
    pending: bool = True
    not_before: float = 0.0  # retry backoff


class TransitionJudge:
    """Transitions -> :class:`Occurrence` (or None: no Event). Remembers which conditions it
    reported failing, so that only their recovery is news."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock  # wall time of a transition that carries none
        self._failing: dict[str, str] = {}  # condition -> reason we reported failing

    def occurrence(self, t: Transition) -> Occurrence | None:
        # A CRITICAL condition that fails before it was ever healthy is a cold start
        # (Starting, LoadingEngine, server still loading), not news; a FATAL one (e.g. a latch
        # restored after a restart) always is.
        failing = t.healthy is False and (
            t.severity >= Severity.FATAL or (t.severity >= Severity.CRITICAL and t.previous is True)
        )
        if failing:
            self._failing[t.condition] = t.reason
            reason = t.reason or "HealthCheckFailed"
            kind = "Warning"
        elif t.healthy is True and t.previous is False and t.condition in self._failing:
            reason = REASON_RECOVERED
            kind = "Normal"
            failed_reason = self._failing.pop(t.condition)
        else:
            return None
        uuid = next((t.labels[k] for k in _UUID_KEYS if t.labels.get(k)), "")
        index = next((t.labels[k] for k in _INDEX_KEYS if t.labels.get(k)), "")
        message = f"{t.condition}: {t.message}" if t.message else t.condition
        if kind == "Normal":
            message = f"{t.condition} recovered (was {failed_reason})" + (
                f": {t.message}" if t.message else ""
            )
        if uuid:
            message += f" [GPU {uuid}]"
        labels = {LABEL_SEVERITY: t.severity.name.lower()}
        if uuid and _LABEL_VALUE_RE.match(uuid):
            labels[LABEL_GPU_UUID] = uuid
        annotations = {
            ANNOTATION_CONDITION: t.condition,
            ANNOTATION_REASON: t.reason if kind == "Warning" else failed_reason,
        }
        if index:
            annotations[ANNOTATION_GPU_INDEX] = index
        return Occurrence(
            type=kind,
            reason=reason[:MAX_REASON],
            condition=t.condition,
            message=message[:MAX_MESSAGE],
            at=t.at or self._clock(),
            labels=labels,
            annotations=annotations,
        )


class SeriesBook:
    """The Events sent or to send, one :class:`Series` per (type, reason, condition)."""

    def __init__(self, aggregate_window_s: float) -> None:
        self.aggregate_window_s = aggregate_window_s
        self.series: dict[tuple[str, str, str], Series] = {}

    def record(self, occ: Occurrence) -> bool:
        """Fold ``occ`` into its series (True: aggregated into an Event's count) or start a
        new one (False)."""
        key = (occ.type, occ.reason, occ.condition)
        series = self.series.get(key)
        if series is not None and occ.at - series.first_at <= self.aggregate_window_s:
            series.count += 1
            series.occurrence = occ
            series.pending = True
            return True
        if len(self.series) >= MAX_SERIES:  # bound memory: forget the oldest settled series
            settled = [k for k, s in self.series.items() if not s.pending]
            for k in settled[: len(settled) // 2 + 1]:
                del self.series[k]
        self.series[key] = Series(occurrence=occ, first_at=occ.at)
        return False

    def in_send_order(self) -> list[Series]:
        """Every series, oldest occurrence first."""
        return sorted(self.series.values(), key=lambda s: s.occurrence.at)


class TokenBucket:
    """``burst`` tokens, refilled at one per ``refill_interval_s`` on a monotonic clock."""

    def __init__(
        self, burst: int, refill_interval_s: float, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.refill_interval_s = refill_interval_s
        self._monotonic = monotonic
        self.tokens = float(burst)
        self._tokens_at = monotonic()

    def take(self) -> bool:
        now = self._monotonic()
        self.tokens = min(
            float(self.burst),
            self.tokens + (now - self._tokens_at) / self.refill_interval_s,
        )
        self._tokens_at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        """Seconds until the next token (after a refused :meth:`take`)."""
        return (1.0 - self.tokens) * self.refill_interval_s
