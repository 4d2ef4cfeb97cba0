"""The trends as a pure fold: canary latencies and GPU samples in, trend results out.

:class:`TrendTracker` keeps the detectors (:class:`sidecar.trends.detectors.TrendBook`) and what
the cause labelling needs between runs, folds every ``canary/latency`` result it is told
(:meth:`TrendTracker.observe`) and, once per run of the ``trends`` check, the GPU component's latest
samples (:meth:`TrendTracker.fold`) into the ``trends/canary-latency`` and ``gpu/<uuid>/trend/*``
results. No I/O, no clock: the samples carry their own wall time, and the GPU samples come through
a read-only view (no driver call). What the metrics should show is kept as plain state
(:attr:`TrendTracker.warnings`, :attr:`TrendTracker.series`) for
:class:`sidecar.trends.metrics.TrendMetrics` to mirror.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sidecar.core.values import SERVICE_READINESS, CheckResult, Severity
from sidecar.gpu.backend import EccCounters, GpuSample, RemappedRows, value_or_none
from sidecar.trends.cause import GpuContext, HostBaseline, ViolationGrowth, gpu_context, likely_cause
from sidecar.trends.config import TrendsConfig
from sidecar.trends.detectors import CounterReading, DriftReading, TrendBook

COND_LATENCY = "trends/canary-latency"
LATENCY_SOURCE = "canary/latency"

# counter kind -> (condition suffix, reason, what it counts)
COUNTERS: Mapping[str, tuple[str, str, str]] = {
    "ecc_corrected": ("ecc", "EccRateRising", "corrected ECC errors"),
    "remapped_rows": ("remap", "RemapRateRising", "remapped rows"),
    "pcie_replays": ("pcie", "PcieReplayRateRising", "PCIe replays"),
}

Samples = Callable[[], Mapping[str, tuple[float, GpuSample]]]
"""uuid -> (wall time of the sample, sample): the GPU component's latest samples, no driver call."""


@dataclass(frozen=True, slots=True)
class LatencyNote:
    """What one canary latency did to the drift detector; ``started_cause`` is the likely
    cause when this sample raised the alarm (the component logs it), else None."""

    reading: DriftReading
    started_cause: str | None = None


class TrendTracker:
    """Folds canary latencies and GPU counters into trend results (see the module docstring)."""

    def __init__(self, config: TrendsConfig, samples: Samples) -> None:
        self.config = config
        self.samples = samples
        self.book = TrendBook(config.latency, config.counters)
        self.runner = ""  # the canary runner the latency baseline belongs to
        self.latency_cause = "unknown"
        self.latency_ratio: float | None = None
        self.host = HostBaseline()
        self.violations = ViolationGrowth()
        self.inventory_seen = False
        # what the metrics show: subject -> (reason, cause) of each warning, and
        # (uuid, counter) -> (rate per hour, seconds to the fatal threshold) of each counter
        # with a rate or a forecast
        self.warnings: dict[str, tuple[str, str]] = {}
        self.series: dict[tuple[str, str], tuple[float | None, float | None]] = {}

    # -- inputs ---------------------------------------------------------------------------
    def observe(self, results: Iterable[CheckResult]) -> list[LatencyNote]:
        """Fold the canary latencies among ``results``; one note per latency folded."""
        notes: list[LatencyNote] = []
        if not (self.config.enabled and self.config.latency_enabled):
            return notes
        for r in results:
            if r.name != LATENCY_SOURCE or not isinstance(r.value, int | float):
                continue
            runner = r.labels.get("runner", "")
            drift = self.book.drift("canary")
            if drift is None:
                continue
            if runner != self.runner:
                if self.runner:  # another runner: another normal
                    drift.rebaseline()
                self.runner = runner
            reading = drift.observe(float(r.value))
            self.latency_ratio = reading.ratio
            started_cause = None
            if reading.started:
                self.latency_cause = started_cause = likely_cause(self.context())
            notes.append(LatencyNote(reading, started_cause))
        return notes

    def fold(self, host_probe_s: float) -> list[CheckResult]:
        """One run of the ``trends`` check: fold the GPU samples, report every subject."""
        self.host.observe(host_probe_s)
        results = [self._latency_result()] if self.config.latency_enabled else []
        samples = dict(self.samples())
        self.inventory_seen = self.inventory_seen or bool(samples)
        # before the first sample (start-up) nothing is known to have left: restored history stays
        if self.inventory_seen:
            self.book.forget(lambda s: not s.startswith("gpu/") or s.split("/")[1] in samples)
            self.violations.forget(lambda u: u in samples)
            for key in [k for k in self.series if k[0] not in samples]:
                del self.series[key]
        for uuid, (wall, sample) in sorted(samples.items()):
            for kind, value in counter_values(sample).items():
                results.append(self._counter_result(uuid, kind, wall, value))
            self.violations.note(uuid, sample)
        for subject in [s for s in self.warnings if s.startswith("gpu/") and s.split("/")[1] not in samples]:
            self._warn(subject, None)
        return results

    def context(self) -> GpuContext:
        """GPU facts now (the worst over this pod's GPUs) for :func:`likely_cause`."""
        return gpu_context(dict(self.samples()), self.violations, self.host.ratio())

    # -- results --------------------------------------------------------------------------
    def _severity(self) -> tuple[Severity, frozenset[str]]:
        if self.config.gates_readiness:
            return Severity.CRITICAL, frozenset({SERVICE_READINESS})
        return Severity.WARNING, frozenset({SERVICE_READINESS})

    def _latency_result(self) -> CheckResult:
        drift = self.book.drift("canary")
        severity, gates = self._severity()
        if drift is None or drift.baseline is None:
            n = 0 if drift is None else len(drift.to_state()["warm"])
            return CheckResult.passed(
                COND_LATENCY,
                message=f"learning the latency baseline ({n}/{self.config.latency.warmup} canaries)",
                severity=severity,
                gates=gates,
            )
        if drift.alarm:
            if self.latency_cause == "unknown":
                self.latency_cause = likely_cause(self.context())
            ratio = self.latency_ratio or 0.0
            self._warn(COND_LATENCY, ("LatencyDrift", self.latency_cause))
            return CheckResult.failed(
                COND_LATENCY,
                "LatencyDrift",
                f"canary latency {ratio:.2f}x its baseline {drift.baseline * 1e3:.3f} ms "
                f"(CUSUM {drift.statistic:.1f} >= {self.config.latency.h:g}); "
                f"likely cause: {self.latency_cause}",
                severity=severity,
                gates=gates,
                labels={"cause": self.latency_cause, "runner": self.runner},
                value=ratio,
            )
        self.latency_cause = "unknown"
        self._warn(COND_LATENCY, None)
        return CheckResult.passed(
            COND_LATENCY,
            message=f"canary latency at its baseline {drift.baseline * 1e3:.3f} ms",
            severity=severity,
            gates=gates,
            value=self.latency_ratio,
        )

    def _counter_result(self, uuid: str, kind: str, wall: float, value: float) -> CheckResult:
        suffix, reason, what = COUNTERS[kind]
        name = f"gpu/{uuid}/trend/{suffix}"
        severity, gates = self._severity()
        trend = self.book.counter(f"gpu/{uuid}/{kind}", kind)
        if trend is None:
            return CheckResult.passed(name, message="not tracked", severity=severity, gates=gates)
        r: CounterReading = trend.observe(wall, value)
        labels = {"uuid": uuid, "counter": kind}
        if r.rate_per_hour is None and r.seconds_to_threshold is None:
            self.series.pop((uuid, kind), None)  # no verdict, no forecast: no stale series
        else:
            self.series[(uuid, kind)] = (r.rate_per_hour, r.seconds_to_threshold)
        if r.rising and r.rate_per_hour is not None:
            self._warn(name, (reason, kind))
            forecast = (
                f"; forecast to the fatal threshold in {r.seconds_to_threshold / 3600:.1f} h"
                if r.seconds_to_threshold is not None
                else ""
            )
            return CheckResult.failed(
                name,
                reason,
                f"{what} rising at {r.rate_per_hour:.1f}/h over {r.span_s / 3600:.1f} h "
                f"(warn above {trend.settings.rate_per_hour:g}/h){forecast}",
                severity=severity,
                gates=gates,
                labels=labels,
                value=r.rate_per_hour,
            )
        self._warn(name, None)
        rate = "learning" if r.rate_per_hour is None else f"{r.rate_per_hour:.2f}/h"
        return CheckResult.passed(
            name,
            message=f"{what}: {rate} (value {value:g})",
            severity=severity,
            gates=gates,
            labels=labels,
            value=r.rate_per_hour,
        )

    def _warn(self, subject: str, warning: tuple[str, str] | None) -> None:
        if warning is None:
            self.warnings.pop(subject, None)
        else:
            self.warnings[subject] = warning


def kind_of(subject: str) -> str:
    """The counter kind of a book subject (``gpu/<uuid>/ecc_corrected`` -> ``ecc_corrected``)."""
    return subject.rsplit("/", 1)[-1]


def counter_values(sample: GpuSample) -> dict[str, float]:
    """The monotone counters of one sample that the trends follow, by kind."""
    out: dict[str, float] = {}
    ecc = value_or_none(sample.ecc)
    if isinstance(ecc, EccCounters):
        total = ecc.aggregate_corrected if ecc.aggregate_corrected is not None else ecc.volatile_corrected
        if total is not None:
            out["ecc_corrected"] = float(total)
    remap = value_or_none(sample.remap)
    if isinstance(remap, RemappedRows):
        out["remapped_rows"] = float(remap.correctable + remap.uncorrectable)
    replays = value_or_none(sample.pcie_replay_count)
    if replays is not None:
        out["pcie_replays"] = float(replays)
    return out
