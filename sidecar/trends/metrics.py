"""The trends' Prometheus series: the detectors' statistics, and one series per warning and per
GPU counter rate that mirrors the tracker's state (a series goes when what it showed goes)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge

from sidecar.trends.detectors import DriftReading


class TrendMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.warning = Gauge(
            "trt_health_trend_warning",
            "1 while a trend detector warns (reason, likely cause); absent otherwise",
            ["subject", "reason", "cause"],
            registry=registry,
        )
        self.latency_statistic = Gauge(
            "trt_health_trend_latency_statistic",
            "CUSUM statistic of the canary latency drift detector (alarm at h)",
            registry=registry,
        )
        self.latency_baseline = Gauge(
            "trt_health_trend_latency_baseline_seconds",
            "Baseline (median) canary latency the drift detector compares with; NaN while learning",
            registry=registry,
        )
        self.counter_rate = Gauge(
            "trt_health_trend_counter_rate_per_hour",
            "Least-squares slope of a GPU counter over the trend window",
            ["uuid", "counter"],
            registry=registry,
        )
        self.counter_forecast = Gauge(
            "trt_health_trend_counter_forecast_seconds",
            "Forecast time until the counter reaches its configured fatal threshold",
            ["uuid", "counter"],
            registry=registry,
        )
        self.host_probe = Gauge(
            "trt_health_trend_host_probe_seconds",
            "Time of the fixed host-side probe (tells a slow host from a slow GPU)",
            registry=registry,
        )
        self._warnings: dict[str, tuple[str, str]] = {}  # subject -> (reason, cause) exported
        self._series: dict[tuple[str, str], tuple[float | None, float | None]] = {}

    def latency(self, reading: DriftReading) -> None:
        """The drift detector after one canary latency."""
        self.latency_statistic.set(reading.statistic)
        self.latency_baseline.set(reading.baseline if reading.baseline else float("nan"))

    def show(
        self,
        warnings: Mapping[str, tuple[str, str]],
        series: Mapping[tuple[str, str], tuple[float | None, float | None]],
    ) -> None:
        """Make the warning and counter series what ``warnings`` and ``series`` say (the
        tracker's :attr:`~sidecar.trends.tracker.TrendTracker.warnings` and ``series``)."""
        for subject, before in list(self._warnings.items()):
            if warnings.get(subject) != before:
                with contextlib.suppress(KeyError):
                    self.warning.remove(subject, *before)
                del self._warnings[subject]
        for subject, warning in warnings.items():
            if subject not in self._warnings:
                self.warning.labels(subject, *warning).set(1)
                self._warnings[subject] = warning
        for key in [k for k in self._series if k not in series]:
            self._counter(key, None, None)
        for key, (rate, eta) in series.items():
            self._counter(key, rate, eta)
        self._series = dict(series)

    def _counter(self, key: tuple[str, str], rate: float | None, eta: float | None) -> None:
        for gauge, value in ((self.counter_rate, rate), (self.counter_forecast, eta)):
            if value is not None:
                gauge.labels(*key).set(value)
            else:
                with contextlib.suppress(KeyError):
                    gauge.remove(*key)
