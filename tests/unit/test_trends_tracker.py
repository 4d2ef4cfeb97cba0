"""The trends' pure fold (sidecar/trends/tracker.py) and the series that mirror it
(sidecar/trends/metrics.py): samples and latencies in, results and metric state out."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.values import CheckResult, CheckStatus
from sidecar.gpu.backend import UNSUPPORTED, EccCounters, GpuInfo, GpuSample, RemappedRows
from sidecar.trends.cause import CLOCK_EVENT_HW_THERMAL
from sidecar.trends.config import TrendsConfig
from sidecar.trends.detectors import DriftReading, DriftSettings
from sidecar.trends.metrics import TrendMetrics
from sidecar.trends.tracker import COND_LATENCY, TrendTracker, counter_values, kind_of

UUID = "GPU-0"


def sample(uuid: str = UUID, **fields: object) -> GpuSample:
    return GpuSample(info=GpuInfo(0, uuid, "NVIDIA H200"), **fields)  # type: ignore[arg-type]


class Samples:
    """The GPU component's latest samples as the tracker sees them, set by the test."""

    def __init__(self) -> None:
        self.now: dict[str, tuple[float, GpuSample]] = {}

    def __call__(self) -> Mapping[str, tuple[float, GpuSample]]:
        return self.now

    def put(self, wall: float, uuid: str = UUID, **fields: object) -> None:
        self.now[uuid] = (wall, sample(uuid, **fields))


def tracker(gpu: Samples, **kw: object) -> TrendTracker:
    kw = {"latency": DriftSettings(warmup=5), "latency_enabled": True, **kw}
    cfg = TrendsConfig(**kw)  # type: ignore[arg-type]
    return TrendTracker(cfg, gpu)


def latency(value: object, runner: str = "cuda-kernel", name: str = "canary/latency") -> CheckResult:
    return CheckResult.passed(name, value=value, labels={"runner": runner})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, {}, id="nothing monitored"),
        pytest.param(
            {"ecc": EccCounters(aggregate_corrected=7, volatile_corrected=3)},
            {"ecc_corrected": 7.0},
            id="aggregate first",
        ),
        pytest.param(
            {"ecc": EccCounters(aggregate_corrected=None, volatile_corrected=3)},
            {"ecc_corrected": 3.0},
            id="volatile without aggregate",
        ),
        pytest.param(
            {"ecc": EccCounters(aggregate_corrected=None, volatile_corrected=None)},
            {},
            id="no corrected counter",
        ),
        pytest.param(
            {"remap": RemappedRows(correctable=2, uncorrectable=1)},
            {"remapped_rows": 3.0},
            id="remapped rows of both kinds",
        ),
        pytest.param(
            {"pcie_replay_count": 12, "ecc": UNSUPPORTED}, {"pcie_replays": 12.0}, id="PCIe replays"
        ),
    ],
)
def test_counter_values(fields: dict[str, object], expected: dict[str, float]) -> None:
    assert counter_values(sample(**fields)) == expected


@pytest.mark.parametrize(
    ("subject", "kind"),
    [
        ("gpu/GPU-0/ecc_corrected", "ecc_corrected"),
        ("canary", "canary"),
        ("gpu/a/b/remapped_rows", "remapped_rows"),
    ],
)
def test_kind_of(subject: str, kind: str) -> None:
    assert kind_of(subject) == kind


@pytest.mark.parametrize(
    ("kw", "results"),
    [
        pytest.param({"enabled": False}, [latency(1e-3)], id="trends off"),
        pytest.param({"latency_enabled": False}, [latency(1e-3)], id="latency drift off"),
        pytest.param({}, [latency(1e-3, name="canary/run")], id="not a latency"),
        pytest.param({}, [latency("slow")], id="not a number"),
    ],
)
def test_observe_folds_only_numeric_canary_latencies_when_enabled(
    kw: dict[str, object], results: list[CheckResult]
) -> None:
    t = tracker(Samples(), **kw)
    assert t.observe(results) == []
    assert t.book.to_state()["drift"] == {}


def test_a_drift_start_carries_the_likely_cause_read_from_the_gpu() -> None:
    gpu = Samples()
    gpu.put(0.0, clock_event_reasons=CLOCK_EVENT_HW_THERMAL)
    t = tracker(gpu)
    notes = t.observe([latency(1e-3)] * 5 + [latency(3e-3)] * 6)
    assert len(notes) == 11 and all(isinstance(n.reading, DriftReading) for n in notes)
    started = [i for i, n in enumerate(notes) if n.started_cause is not None]
    assert len(started) == 1 and notes[started[0]].started_cause == "thermal_throttle"
    assert notes[started[0]].reading.started and t.latency_cause == "thermal_throttle"


def test_another_runner_learns_another_baseline() -> None:
    t = tracker(Samples())
    t.observe([latency(1e-3)] * 5)
    assert t.book.drifts["canary"].baseline == pytest.approx(1e-3)
    (note,) = t.observe([latency(5e-3, runner="tensor-core")])
    assert note.reading.baseline is None and t.runner == "tensor-core"


def test_fold_reports_latency_and_counters_and_keeps_what_the_metrics_show() -> None:
    gpu = Samples()
    t = tracker(gpu)
    results: list[CheckResult] = []
    for minute in range(31):
        gpu.put(minute * 60.0, ecc=EccCounters(aggregate_corrected=minute * 10))
        results = t.fold(3e-4)
    by = {r.name: r for r in results}
    assert set(by) == {COND_LATENCY, f"gpu/{UUID}/trend/ecc"}
    assert "learning" in by[COND_LATENCY].message
    assert (by[f"gpu/{UUID}/trend/ecc"].status, by[f"gpu/{UUID}/trend/ecc"].reason) == (
        CheckStatus.FAIL,
        "EccRateRising",
    )
    assert t.warnings == {f"gpu/{UUID}/trend/ecc": ("EccRateRising", "ecc_corrected")}
    ((key, (rate, eta)),) = t.series.items()
    assert key == (UUID, "ecc_corrected") and rate == pytest.approx(600.0) and eta is None


def test_a_gpu_that_leaves_takes_its_warnings_series_and_history() -> None:
    gpu = Samples()
    t = tracker(gpu)
    for minute in range(31):
        gpu.put(minute * 60.0, ecc=EccCounters(aggregate_corrected=minute * 10))
        t.fold(3e-4)
    gpu.now.clear()
    gpu.put(2000.0, uuid="GPU-1")
    t.fold(3e-4)
    assert (t.warnings, t.series, t.book.to_state()["counters"]) == ({}, {}, {})


def test_before_the_first_sample_nothing_is_forgotten() -> None:
    t = tracker(Samples())
    t.book.counter(f"gpu/{UUID}/ecc_corrected", "ecc_corrected")
    t.fold(3e-4)
    assert f"gpu/{UUID}/ecc_corrected" in t.book.to_state()["counters"]


def test_a_counter_without_a_rate_has_no_series() -> None:
    gpu = Samples()
    t = tracker(gpu)
    gpu.put(0.0, pcie_replay_count=0)
    t.fold(3e-4)
    assert t.series == {}  # ten minutes of history before a rate


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_metrics_mirror_the_warnings_and_remove_what_went() -> None:
    reg = CollectorRegistry()
    m = TrendMetrics(reg)
    m.show({"a": ("EccRateRising", "ecc_corrected"), "b": ("LatencyDrift", "host_slow")}, {})
    m.show({"a": ("EccRateRising", "ecc_corrected"), "b": ("LatencyDrift", "power_throttle")}, {})
    assert (
        value(reg, "trt_health_trend_warning", subject="a", reason="EccRateRising", cause="ecc_corrected")
        == 1
    )
    assert (
        value(reg, "trt_health_trend_warning", subject="b", reason="LatencyDrift", cause="host_slow") is None
    )
    assert (
        value(reg, "trt_health_trend_warning", subject="b", reason="LatencyDrift", cause="power_throttle")
        == 1
    )
    m.show({}, {})
    assert (
        value(reg, "trt_health_trend_warning", subject="a", reason="EccRateRising", cause="ecc_corrected")
        is None
    )


def test_metrics_mirror_the_counter_series() -> None:
    reg = CollectorRegistry()
    m = TrendMetrics(reg)
    key = {"uuid": UUID, "counter": "remapped_rows"}
    m.show({}, {(UUID, "remapped_rows"): (2.0, 3600.0)})
    assert value(reg, "trt_health_trend_counter_rate_per_hour", **key) == 2.0
    assert value(reg, "trt_health_trend_counter_forecast_seconds", **key) == 3600.0
    m.show({}, {(UUID, "remapped_rows"): (0.5, None)})  # no forecast any more: no stale one
    assert value(reg, "trt_health_trend_counter_rate_per_hour", **key) == 0.5
    assert value(reg, "trt_health_trend_counter_forecast_seconds", **key) is None
    m.show({}, {})
    assert value(reg, "trt_health_trend_counter_rate_per_hour", **key) is None


def test_metrics_show_the_drift_statistic_and_nan_while_learning() -> None:
    reg = CollectorRegistry()
    m = TrendMetrics(reg)
    m.latency(DriftReading(False, False, False, 0.0, None, None))
    baseline = value(reg, "trt_health_trend_latency_baseline_seconds")
    assert baseline is not None and baseline != baseline  # NaN
    m.latency(DriftReading(True, True, False, 12.5, 1e-3, 1.3))
    assert value(reg, "trt_health_trend_latency_statistic") == 12.5
    assert value(reg, "trt_health_trend_latency_baseline_seconds") == 1e-3
