"""Trend detectors: early warnings from health history. Pure: no I/O, no clock (time is passed in).

Two kinds, both WARNING-level by default (they never gate readiness unless configured):

- :class:`LatencyDrift`: a one-sided CUSUM on the canary latency, standardised by a robust
  baseline (median and MAD of the first ``warmup`` samples). It detects a *sustained* upward
  shift of the mean; one sample moves the statistic by at most ``clip``, so a spike cannot
  alarm alone (it takes ``h / clip`` consecutive extreme samples). Parameters (documented in
  docs/trends.md): ``k`` (allowance, in baseline standard deviations: half the smallest shift
  worth detecting; at least ``min_rel_shift / 2`` of the baseline, so shifts of a few
  per cent on a very steady canary do not alarm), ``h`` (decision threshold). A shift of ``d``
  standard deviations is found after about ``h / (d - k)`` samples; a 5 % step is ``0.05 / cv``
  deviations for a canary whose latency varies by ``cv``. Measured by ``bench/trends.py`` with
  the defaults (200 seeds, docs/trends.md): a 5 % step is found after a median of 3 canaries at
  cv <= 1 % (worst 7) and 9 at cv 3 % (worst 28, 32 with heavy-tailed noise), with at most 0.34
  false alarms per 10,000 stationary samples up to cv 3 %; the int8 GEMM canary's cv on the H200
  is 0.2-0.4 %. A canary noisier than ~4 % (a tiny CUDA-core kernel: ~25 %) is too noisy for a
  5 % step in 30 samples.
  The alarm clears when the statistic has decayed back to zero (latency back at the baseline).
- :class:`CounterTrend`: a least-squares slope over a bounded window of a monotone counter
  (corrected ECC errors, remapped rows, PCIe replays), in counts per hour, with a forecast of the
  time until a fatal threshold where one exists. A counter that goes *down* means a reset
  (volatile counters restart): the window restarts.

The likely cause of a drift (throttling, clocks, temperature, other processes, a slow host) is
named by :mod:`sidecar.trends.cause`.

Every detector's state round-trips through :meth:`to_state` / ``from_state`` (plain JSON
values, bounded in size) so the state dir keeps a trend across restarts.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# -- latency: robust CUSUM ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DriftSettings:
    """Parameters of :class:`LatencyDrift` (see the module docstring for what they mean)."""

    warmup: int = 100  # samples that form the baseline
    k: float = 0.5  # allowance, in baseline standard deviations
    h: float = 10.0  # decision threshold
    clip: float = 3.0  # one sample moves the statistic by at most this much (h / clip samples to alarm)
    min_rel_sigma: float = 0.002  # floor on sigma / median: a perfectly steady baseline is not 0
    min_rel_shift: float = 0.04  # the allowance is at least half this fraction of the baseline

    def __post_init__(self) -> None:
        if self.warmup < 5:
            raise ValueError("warmup must be at least 5 samples")
        for name in ("k", "h", "clip", "min_rel_sigma"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number")
        if not (math.isfinite(self.min_rel_shift) and self.min_rel_shift >= 0):
            raise ValueError("min_rel_shift must be a finite number >= 0")


@dataclass(frozen=True, slots=True)
class DriftReading:
    """What one sample did to the detector."""

    alarm: bool  # True while a drift is established
    started: bool  # True on the sample that raised the alarm
    cleared: bool  # True on the sample that cleared it
    statistic: float  # CUSUM value (alarm at >= h)
    baseline: float | None  # median latency of the baseline, seconds; None while warming up
    ratio: float | None  # this sample over the baseline


def _median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    mid = n // 2
    return s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2.0


class LatencyDrift:
    """One-sided robust CUSUM for an upward shift of canary latency."""

    def __init__(self, settings: DriftSettings | None = None) -> None:
        self.settings = settings or DriftSettings()
        self._warm: list[float] = []
        self.baseline: float | None = None
        self.sigma: float | None = None
        self.statistic = 0.0
        self.alarm = False
        self.samples = 0

    def observe(self, latency_s: float) -> DriftReading:
        """Fold in one canary latency (seconds). Non-finite or non-positive values are ignored."""
        st = self.settings
        if not (math.isfinite(latency_s) and latency_s > 0):
            return self._reading(False, False, None)
        self.samples += 1
        if self.baseline is None or self.sigma is None:
            self._warm.append(latency_s)
            if len(self._warm) >= st.warmup:
                med = _median(self._warm)
                mad = _median([abs(x - med) for x in self._warm])
                # 1.4826 * MAD estimates the standard deviation of Gaussian noise
                self.baseline = med
                self.sigma = max(1.4826 * mad, st.min_rel_sigma * med)
                self._warm = []
            return self._reading(False, False, None)
        base, sigma = self.baseline, self.sigma
        z = (latency_s - base) / sigma
        # the allowance is at least half the smallest shift worth reporting
        k = max(st.k, st.min_rel_shift * base / sigma / 2.0)
        step = max(-st.clip, min(st.clip, z - k))
        self.statistic = min(2.0 * st.h, max(0.0, self.statistic + step))
        started = cleared = False
        if not self.alarm and self.statistic >= st.h:
            self.alarm = started = True
        elif self.alarm and self.statistic <= 0.0:
            self.alarm = False
            cleared = True
        return self._reading(started, cleared, latency_s / base)

    def _reading(self, started: bool, cleared: bool, ratio: float | None) -> DriftReading:
        return DriftReading(self.alarm, started, cleared, self.statistic, self.baseline, ratio)

    def rebaseline(self) -> None:
        """Forget the baseline (a new engine, GPU or software version changes what is normal)."""
        self._warm = []
        self.baseline = self.sigma = None
        self.statistic = 0.0
        self.alarm = False

    def to_state(self) -> dict[str, Any]:
        return {
            "warm": list(self._warm),
            "baseline": self.baseline,
            "sigma": self.sigma,
            "statistic": self.statistic,
            "alarm": self.alarm,
            "samples": self.samples,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], settings: DriftSettings | None = None) -> LatencyDrift:
        """Rebuild from :meth:`to_state`; anything malformed starts a fresh baseline."""
        d = cls(settings)
        try:
            warm = [float(x) for x in state.get("warm", [])][: d.settings.warmup]
            baseline = state.get("baseline")
            sigma = state.get("sigma")
            if baseline is not None and sigma is not None:
                b, s = float(baseline), float(sigma)
                if not (math.isfinite(b) and b > 0 and math.isfinite(s) and s > 0):
                    return cls(settings)
                d.baseline, d.sigma = b, s
            else:
                d._warm = [x for x in warm if math.isfinite(x) and x > 0]
            stat = float(state.get("statistic", 0.0))
            d.statistic = min(2.0 * d.settings.h, max(0.0, stat)) if math.isfinite(stat) else 0.0
            d.alarm = bool(state.get("alarm", False)) and d.baseline is not None
            d.samples = max(0, int(state.get("samples", 0)))
        except (TypeError, ValueError):
            return cls(settings)
        return d


# -- counters: rate, slope, forecast ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterSettings:
    """Parameters of :class:`CounterTrend`."""

    window_s: float = 6 * 3600.0  # slope over this much history
    max_points: int = 256  # bounded memory and state file
    min_span_s: float = 600.0  # no verdict on less history than this
    rate_per_hour: float = 10.0  # warn above this many counts per hour
    fatal_threshold: float | None = None  # forecast the time to this value where it exists
    forecast_horizon_s: float = 7 * 24 * 3600.0  # warn when the forecast falls inside this

    def __post_init__(self) -> None:
        for name in ("window_s", "min_span_s", "rate_per_hour", "forecast_horizon_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number")
        if self.max_points < 3:
            raise ValueError("max_points must be at least 3")
        if self.fatal_threshold is not None and not math.isfinite(self.fatal_threshold):
            raise ValueError("fatal_threshold must be finite")


@dataclass(frozen=True, slots=True)
class CounterReading:
    """The trend of one counter after a sample."""

    rising: bool  # rate over the threshold, or the fatal threshold forecast within the horizon
    rate_per_hour: float | None  # least-squares slope; None without enough history
    seconds_to_threshold: float | None  # forecast; None without a threshold or a rising slope
    span_s: float  # history the slope is computed over
    reset: bool  # the counter went down: a reset, the history restarted


class CounterTrend:
    """Least-squares slope of a monotone counter over a bounded, decimated window."""

    def __init__(self, settings: CounterSettings | None = None) -> None:
        self.settings = settings or CounterSettings()
        self._points: deque[tuple[float, float]] = deque()

    def observe(self, now: float, value: float) -> CounterReading:
        st = self.settings
        reset = False
        if not math.isfinite(value) or not math.isfinite(now):
            return self._reading(False)
        if self._points and value < self._points[-1][1]:
            self._points.clear()
            reset = True
        if self._points and now <= self._points[-1][0]:
            # same or earlier time (a clock step): keep the newer value at the last time
            t, _ = self._points.pop()
            self._points.append((t, value))
        else:
            self._points.append((now, value))
        while len(self._points) > 2 and now - self._points[0][0] > st.window_s:
            self._points.popleft()
        if len(self._points) > st.max_points:
            self._decimate()
        return self._reading(reset)

    def _decimate(self) -> None:
        # keep the first and the last point, drop every second one in between
        pts = list(self._points)
        kept = [pts[0], *pts[1:-1:2], pts[-1]]
        self._points = deque(kept)

    def _slope_per_s(self) -> float | None:
        pts = self._points
        n = len(pts)
        if n < 2:
            return None
        t0 = pts[0][0]
        mt = sum(t - t0 for t, _ in pts) / n
        mv = sum(v for _, v in pts) / n
        sxx = sum((t - t0 - mt) ** 2 for t, _ in pts)
        if sxx <= 0:
            return None
        sxy = sum((t - t0 - mt) * (v - mv) for t, v in pts)
        return sxy / sxx

    def _reading(self, reset: bool) -> CounterReading:
        st = self.settings
        span = self._points[-1][0] - self._points[0][0] if self._points else 0.0
        slope = self._slope_per_s() if span >= st.min_span_s else None
        if slope is None:
            return CounterReading(False, None, None, span, reset)
        rate = max(0.0, slope * 3600.0)
        eta: float | None = None
        if st.fatal_threshold is not None and slope > 0:
            eta = max(0.0, (st.fatal_threshold - self._points[-1][1]) / slope)
        rising = rate > st.rate_per_hour or (eta is not None and eta <= st.forecast_horizon_s)
        return CounterReading(rising, rate, eta, span, reset)

    def to_state(self) -> dict[str, Any]:
        return {"points": [[t, v] for t, v in self._points]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], settings: CounterSettings | None = None) -> CounterTrend:
        """Rebuild from :meth:`to_state` (times are the caller's clock: wall time when
        persisted). Anything malformed starts an empty history."""
        c = cls(settings)
        try:
            pts = [(float(t), float(v)) for t, v in state.get("points", [])]
        except (TypeError, ValueError):
            return c
        pts = [(t, v) for t, v in pts if math.isfinite(t) and math.isfinite(v)]
        pts = pts[-c.settings.max_points :]
        if all(b[0] > a[0] and b[1] >= a[1] for a, b in itertools.pairwise(pts)):
            c._points = deque(pts)
        return c


# -- a book of detectors, persisted as one bounded JSON document ----------------------------

STATE_VERSION = 1
MAX_SUBJECTS = 64  # bounded: GPUs x counters + canaries, far below this in practice


class TrendBook:
    """Detectors by subject (``canary``, ``gpu/<uuid>/ecc_corrected``, ...), created on first
    use with the book's settings, and their state as one JSON-able document.

    Subjects beyond :data:`MAX_SUBJECTS` are refused (``None``), so a file or a changing
    inventory cannot grow the book without bound."""

    def __init__(
        self,
        drift: DriftSettings | None = None,
        counters: Mapping[str, CounterSettings] | None = None,
    ) -> None:
        self.drift_settings = drift or DriftSettings()
        self.counter_settings: dict[str, CounterSettings] = dict(counters or {})
        self.drifts: dict[str, LatencyDrift] = {}
        self.counters: dict[str, CounterTrend] = {}

    def _room(self) -> bool:
        return len(self.drifts) + len(self.counters) < MAX_SUBJECTS

    def drift(self, subject: str) -> LatencyDrift | None:
        d = self.drifts.get(subject)
        if d is None and self._room():
            d = self.drifts[subject] = LatencyDrift(self.drift_settings)
        return d

    def counter(self, subject: str, kind: str) -> CounterTrend | None:
        """The counter trend of ``subject``, with the settings of its ``kind`` (e.g.
        ``ecc_corrected``); None when the kind is not configured or the book is full."""
        c = self.counters.get(subject)
        settings = self.counter_settings.get(kind)
        if c is None and settings is not None and self._room():
            c = self.counters[subject] = CounterTrend(settings)
        return c

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop the subjects ``keep`` rejects (a GPU that left the inventory)."""
        for book in (self.drifts, self.counters):
            for subject in [s for s in book if not keep(s)]:
                del book[subject]

    def to_state(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "drift": {s: d.to_state() for s, d in self.drifts.items()},
            "counters": {s: c.to_state() for s, c in self.counters.items()},
        }

    def restore(self, state: Any, kind_of: Callable[[str], str]) -> bool:
        """Load :meth:`to_state` output. Returns False (and keeps an empty book) when the
        document is not one this version wrote; malformed entries are skipped one by one."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return False
        drift, counters = state.get("drift"), state.get("counters")
        if isinstance(drift, dict):
            for subject, st in list(drift.items())[:MAX_SUBJECTS]:
                if isinstance(subject, str) and isinstance(st, dict) and self._room():
                    self.drifts[subject] = LatencyDrift.from_state(st, self.drift_settings)
        if isinstance(counters, dict):
            for subject, st in list(counters.items())[:MAX_SUBJECTS]:
                if not (isinstance(subject, str) and isinstance(st, dict)):
                    continue
                settings = self.counter_settings.get(kind_of(subject))
                if settings is not None and self._room():
                    self.counters[subject] = CounterTrend.from_state(st, settings)
        return True
