"""The trend detectors (sidecar/trends/detectors.py): pure, driven sample by sample with explicit times."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sidecar.trends.cause import CLOCK_EVENT_HW_THERMAL, CLOCK_EVENT_SW_POWER_CAP, GpuContext, likely_cause
from sidecar.trends.detectors import (
    MAX_SUBJECTS,
    CounterSettings,
    CounterTrend,
    DriftSettings,
    LatencyDrift,
    TrendBook,
)

BASE = 0.000_144


def steady(n: int, cv: float = 0.003, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in BASE * (1.0 + cv * rng.standard_normal(n))]


def feed(d: LatencyDrift, xs: list[float]) -> list[int]:
    """Indices of the samples that raised an alarm."""
    return [i for i, x in enumerate(xs) if d.observe(x).started]


def test_no_verdict_while_the_baseline_is_learned() -> None:
    """The first `warmup` samples only build the baseline: no alarm, even for a huge value."""
    d = LatencyDrift(DriftSettings(warmup=10))
    readings = [d.observe(x) for x in [BASE] * 9]
    assert all(r.baseline is None and not r.alarm for r in readings)
    last = d.observe(BASE * 10)  # completes the baseline: the median ignores the outlier
    assert not last.alarm and last.baseline == pytest.approx(BASE)


def test_a_five_percent_step_alarms_within_thirty_canaries() -> None:
    """A sustained 5 % rise on a steady canary is found quickly, and not before it happens."""
    d = LatencyDrift()
    warm = steady(d.settings.warmup + 100)
    assert feed(d, warm) == []
    stepped = [x * 1.05 for x in steady(60, seed=2)]
    alarms = feed(d, stepped)
    assert alarms and alarms[0] < 30
    assert d.alarm


def test_a_single_spike_does_not_alarm() -> None:
    """One sample 100x the baseline moves the statistic by at most `clip`, below `h`."""
    d = LatencyDrift()
    feed(d, steady(d.settings.warmup + 20))
    r = d.observe(BASE * 100)
    assert not r.alarm and r.statistic <= d.settings.clip
    assert feed(d, steady(50, seed=3)) == []


def test_shifts_below_the_minimum_never_alarm_on_a_steady_canary() -> None:
    """A 1 % rise on a 0.3 %-noise canary is many deviations but below `min_rel_shift`."""
    d = LatencyDrift()
    feed(d, steady(d.settings.warmup))
    assert feed(d, [x * 1.01 for x in steady(2000, seed=4)]) == []


def test_the_alarm_clears_when_latency_returns_to_the_baseline() -> None:
    d = LatencyDrift()
    feed(d, steady(d.settings.warmup))
    feed(d, [x * 1.2 for x in steady(40, seed=5)])
    assert d.alarm
    cleared = [i for i, x in enumerate(steady(200, seed=6)) if d.observe(x).cleared]
    assert cleared and not d.alarm


def test_non_finite_and_non_positive_samples_are_ignored() -> None:
    d = LatencyDrift(DriftSettings(warmup=5))
    for x in (float("nan"), float("inf"), 0.0, -1.0):
        d.observe(x)
    assert d.samples == 0


def test_state_round_trips_through_json_and_garbage_starts_fresh() -> None:
    """A restart keeps the baseline, the statistic and an established alarm."""
    d = LatencyDrift()
    feed(d, steady(d.settings.warmup))
    feed(d, [x * 1.2 for x in steady(20, seed=7)])
    again = LatencyDrift.from_state(json.loads(json.dumps(d.to_state())))
    assert (again.baseline, again.sigma, again.statistic, again.alarm) == (
        d.baseline,
        d.sigma,
        d.statistic,
        d.alarm,
    )
    for garbage in ({"baseline": "x", "sigma": 1}, {"baseline": -1.0, "sigma": 1.0}, {"warm": [None]}):
        fresh = LatencyDrift.from_state(garbage)
        assert fresh.baseline is None and not fresh.alarm


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(warmup=1), "warmup"),
        (dict(h=float("nan")), "h must"),
        (dict(k=0.0), "k must"),
    ],
)
def test_invalid_drift_settings_are_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DriftSettings(**settings)  # type: ignore[arg-type]


def ramp(trend: CounterTrend, rate_per_hour: float, hours: float, every_s: float = 60.0) -> None:
    t = 0.0
    while t <= hours * 3600:
        trend.observe(t, rate_per_hour * t / 3600.0)
        t += every_s


def test_counter_rate_over_threshold_is_rising() -> None:
    c = CounterTrend(CounterSettings(rate_per_hour=10.0))
    ramp(c, 30.0, 1.0)
    r = c.observe(3660.0, 30.5)
    assert r.rising and r.rate_per_hour == pytest.approx(30.0, rel=0.05)


def test_counter_below_threshold_and_short_history_are_not_rising() -> None:
    slow = CounterTrend(CounterSettings(rate_per_hour=10.0))
    ramp(slow, 5.0, 2.0)
    assert not slow.observe(7300.0, 10.2).rising
    short = CounterTrend(CounterSettings(min_span_s=600.0))
    short.observe(0.0, 0.0)
    r = short.observe(60.0, 1000.0)
    assert r.rate_per_hour is None and not r.rising


def test_counter_forecasts_the_time_to_a_fatal_threshold() -> None:
    c = CounterTrend(CounterSettings(rate_per_hour=1e9, fatal_threshold=100.0, forecast_horizon_s=3600.0))
    ramp(c, 50.0, 1.0)
    r = c.observe(3660.0, 50.0 * 3660 / 3600)
    assert r.seconds_to_threshold == pytest.approx((100.0 - 50.0 * 3660 / 3600) / 50.0 * 3600, rel=0.01)
    assert r.rising  # ~59 minutes away, inside the one-hour horizon


def test_counter_going_down_is_a_reset_that_restarts_the_window() -> None:
    c = CounterTrend(CounterSettings(rate_per_hour=10.0))
    ramp(c, 100.0, 1.0)
    r = c.observe(4000.0, 0.0)
    assert r.reset and r.rate_per_hour is None and not r.rising


def test_counter_history_is_bounded_and_persists() -> None:
    settings = CounterSettings(max_points=16, window_s=1e9)
    c = CounterTrend(settings)
    ramp(c, 60.0, 10.0, every_s=10.0)
    state = c.to_state()
    assert len(state["points"]) <= 16
    again = CounterTrend.from_state(json.loads(json.dumps(state)), settings)
    assert again.to_state() == state
    assert CounterTrend.from_state({"points": [[0, 5], [1, 3]]}).to_state() == {"points": []}
    assert CounterTrend.from_state({"points": "nope"}).to_state() == {"points": []}


@pytest.mark.parametrize(
    ("ctx", "cause"),
    [
        (GpuContext(clock_event_reasons=CLOCK_EVENT_HW_THERMAL), "thermal_throttle"),
        (GpuContext(thermal_violation_s_delta=0.3), "thermal_throttle"),
        (GpuContext(temperature_c=86, slowdown_c=87), "thermal_throttle"),
        (GpuContext(clock_event_reasons=CLOCK_EVENT_SW_POWER_CAP), "power_throttle"),
        (GpuContext(power_violation_s_delta=0.36), "power_throttle"),
        (GpuContext(sm_clock_ratio=0.7), "clocks_low"),
        (GpuContext(host_launch_ratio=1.5), "host_slow"),
        (GpuContext(other_processes=2), "gpu_shared"),
        (GpuContext(utilization=0.9), "gpu_shared"),
        (GpuContext(), "unknown"),
    ],
)
def test_likely_cause(ctx: GpuContext, cause: str) -> None:
    assert likely_cause(ctx) == cause


def test_book_creates_detectors_per_subject_and_round_trips() -> None:
    """A book of detectors keeps each subject apart and survives a JSON round trip."""
    book = TrendBook(counters={"ecc_corrected": CounterSettings(rate_per_hour=10.0)})
    canary = book.drift("canary")
    assert canary is not None and book.drift("canary") is canary
    assert book.counter("gpu/G0/pcie", "pcie_replays") is None  # kind not configured
    ecc = book.counter("gpu/G0/ecc_corrected", "ecc_corrected")
    assert ecc is not None
    ramp(ecc, 30.0, 1.0)
    feed(canary, steady(150))
    again = TrendBook(counters={"ecc_corrected": CounterSettings(rate_per_hour=10.0)})
    assert again.restore(json.loads(json.dumps(book.to_state())), kind_of=lambda s: s.rsplit("/", 1)[-1])
    assert again.to_state() == book.to_state()


def test_book_is_bounded_and_refuses_foreign_documents() -> None:
    book = TrendBook()
    subjects = [book.drift(f"s{i}") for i in range(MAX_SUBJECTS + 10)]
    assert sum(d is not None for d in subjects) == MAX_SUBJECTS
    fresh = TrendBook()
    docs: list[object] = [{}, {"version": 99}, [], "x", {"version": 1, "drift": {"a": "nope"}}]
    for doc in docs:
        fresh.restore(doc, kind_of=str)
    assert fresh.to_state()["drift"] == {}


def test_book_forgets_subjects_of_a_gpu_that_left() -> None:
    book = TrendBook(counters={"ecc_corrected": CounterSettings()})
    book.counter("gpu/G0/ecc_corrected", "ecc_corrected")
    book.counter("gpu/G1/ecc_corrected", "ecc_corrected")
    book.forget(lambda s: not s.startswith("gpu/G1/"))
    assert list(book.to_state()["counters"]) == ["gpu/G0/ecc_corrected"]
