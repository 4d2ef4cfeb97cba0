"""The trends component: early warnings from health history (predictive maintenance).

Wiring (app.py): ``TrendComponent(parse_trends_config(root.sub("trends")), registry=...,
state_dir=..., gpu_state=...)``; the app passes every result it records to :meth:`observe`
(the canary latency is read from ``canary/latency`` results), and the ``trends`` check folds the
GPU component's latest samples (no NVML call of its own) every ``interval``.

Conditions reported (WARNING: they never gate readiness unless ``gates_readiness: true``):

- ``trends/canary-latency`` (opt-in: ``latency.enabled: true``): ``LatencyDrift`` when the
  canary latency shifted up (CUSUM, see
  :mod:`sidecar.trends.detectors`), labelled with the likely ``cause`` (power or thermal
  throttling, low clocks, a slow host, a shared GPU) read from the GPU at the same time;
- ``gpu/<uuid>/trend/ecc``: ``EccRateRising`` (corrected ECC errors per hour over the window);
- ``gpu/<uuid>/trend/remap``: ``RemapRateRising`` (remapped rows), with the forecast time to
  ``fatal_threshold`` where configured;
- ``gpu/<uuid>/trend/pcie``: ``PcieReplayRateRising``.

History is persisted in ``state_dir/trends.json`` (bounded) every ``persist_interval`` and at
stop, so a restart keeps the baseline and the counter windows (wall-clock times).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Gauge

from sidecar.core.protocols import Check, ResultSink
from sidecar.core.values import SERVICE_READINESS, CheckResult, Severity
from sidecar.gpu.backend import EccCounters, GpuSample, RemappedRows, value_or_none
from sidecar.trends.config import TrendsConfig
from sidecar.trends.detectors import (
    CounterReading,
    GpuContext,
    TrendBook,
    likely_cause,
)

log = logging.getLogger(__name__)

CHECK_NAME = "trends"
COND_LATENCY = "trends/canary-latency"
LATENCY_SOURCE = "canary/latency"
MAX_STATE_BYTES = 256 * 1024

# counter kind -> (condition suffix, reason, what it counts)
COUNTERS: Mapping[str, tuple[str, str, str]] = {
    "ecc_corrected": ("ecc", "EccRateRising", "corrected ECC errors"),
    "remapped_rows": ("remap", "RemapRateRising", "remapped rows"),
    "pcie_replays": ("pcie", "PcieReplayRateRising", "PCIe replays"),
}


class GpuSamples(Protocol):
    """What the trends component asks the GPU component: its latest samples, no driver call."""

    def latest_samples(self) -> Mapping[str, tuple[float, GpuSample]]:
        """uuid -> (wall time of the sample, sample), for the GPUs in the inventory."""
        ...


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


HOST_PROBE_BYTES = 256 * 1024
_PROBE_DATA = bytes(range(256)) * (HOST_PROBE_BYTES // 256)


def host_probe() -> float:
    """Seconds for a fixed amount of host CPU work (sha256 of 256 KiB, ~0.3 ms)."""
    t0 = time.perf_counter()
    hashlib.sha256(_PROBE_DATA).digest()
    return time.perf_counter() - t0


class TrendCheck:
    name = CHECK_NAME

    def __init__(self, component: TrendComponent) -> None:
        self.component = component
        self.interval_s = component.config.interval_s
        self.timeout_s = max(2.0, component.config.interval_s)

    async def run(self) -> Sequence[CheckResult]:
        probe = await asyncio.to_thread(host_probe)
        return await self.component.evaluate(probe)

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return []  # the previous trend results stand; a slow host probe is itself no finding


class TrendComponent:
    """Folds canary latencies and GPU counters into trend warnings. Implements Component."""

    name = "trends"

    def __init__(
        self,
        config: TrendsConfig,
        *,
        registry: CollectorRegistry,
        state_dir: Path,
        gpu_samples: GpuSamples | None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = TrendMetrics(registry)
        self.path = state_dir / config.state_file
        self.gpu_samples = gpu_samples
        self.wall = wall
        self.book = TrendBook(config.latency, config.counters)
        self._runner = ""  # the canary runner the latency baseline belongs to
        self._latency_cause = "unknown"
        self._latency_ratio: float | None = None
        self._warnings: dict[str, tuple[str, str]] = {}  # subject -> (reason, cause) exported
        self._host: deque[float] = deque(maxlen=64)
        self._host_baseline: float | None = None
        # uuid -> violation times (power, thermal) at the previous sample, and their growth since
        self._violation: dict[str, tuple[float | None, float | None]] = {}
        self._violation_delta: dict[str, tuple[float, float]] = {}
        self._last_persist = 0.0
        self._write_failing = False
        self._inventory_seen = False
        self._series: set[tuple[str, str]] = set()  # (uuid, counter) with a rate or forecast series
        self._sink: ResultSink | None = None

    # -- Component ------------------------------------------------------------------------
    def checks(self) -> Sequence[Check]:
        return [TrendCheck(self)] if self.config.enabled else []

    async def start(self, sink: ResultSink) -> None:
        self._sink = sink
        if self.config.enabled:
            state = await asyncio.to_thread(self._read_state)
            if state is not None and not self.book.restore(state, kind_of=_kind_of):
                log.warning("trend history not restored: unknown format", extra={"file": str(self.path)})

    async def stop(self) -> None:
        if self.config.enabled:
            await asyncio.to_thread(self._write_state, self.book.to_state())

    # -- inputs ---------------------------------------------------------------------------
    def observe(self, results: Iterable[CheckResult]) -> None:
        """Told every result the app records (on the event loop; cheap, no I/O)."""
        if not (self.config.enabled and self.config.latency_enabled):
            return
        for r in results:
            if r.name != LATENCY_SOURCE or not isinstance(r.value, int | float):
                continue
            runner = r.labels.get("runner", "")
            drift = self.book.drift("canary")
            if drift is None:
                continue
            if runner != self._runner:
                if self._runner:  # another runner: another normal
                    drift.rebaseline()
                self._runner = runner
            reading = drift.observe(float(r.value))
            self._latency_ratio = reading.ratio
            self.metrics.latency_statistic.set(reading.statistic)
            self.metrics.latency_baseline.set(reading.baseline if reading.baseline else float("nan"))
            if reading.started:
                self._latency_cause = likely_cause(self._context())
                log.warning(
                    "canary latency drift",
                    extra={
                        "ratio": reading.ratio,
                        "baseline_s": reading.baseline,
                        "cause": self._latency_cause,
                    },
                )

    async def evaluate(self, host_probe_s: float) -> list[CheckResult]:
        """One run of the ``trends`` check: fold the GPU samples, report every subject."""
        self._fold_host(host_probe_s)
        results = [self._latency_result()] if self.config.latency_enabled else []
        samples = dict(self.gpu_samples.latest_samples()) if self.gpu_samples is not None else {}
        self._inventory_seen = self._inventory_seen or bool(samples)
        # before the first sample (start-up) nothing is known to have left: restored history stays
        if self._inventory_seen:
            self.book.forget(lambda s: not s.startswith("gpu/") or s.split("/")[1] in samples)
            for gone in [u for u in self._violation if u not in samples]:
                self._violation.pop(gone, None)
                self._violation_delta.pop(gone, None)
            for uuid, kind in [k for k in self._series if k[0] not in samples]:
                self._counter_series(uuid, kind, None, None)
        for uuid, (wall, sample) in sorted(samples.items()):
            for kind, value in _counter_values(sample).items():
                results.append(self._counter_result(uuid, kind, wall, value))
            self._note_violation(uuid, sample)
        for subject in [s for s in self._warnings if s.startswith("gpu/") and s.split("/")[1] not in samples]:
            self._export(subject, None)
        now = self.wall()
        if now - self._last_persist >= self.config.persist_interval_s:
            self._last_persist = now
            await asyncio.to_thread(self._write_state, self.book.to_state())
        return results

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
            if self._latency_cause == "unknown":
                self._latency_cause = likely_cause(self._context())
            ratio = self._latency_ratio or 0.0
            self._export(COND_LATENCY, ("LatencyDrift", self._latency_cause))
            return CheckResult.failed(
                COND_LATENCY,
                "LatencyDrift",
                f"canary latency {ratio:.2f}x its baseline {drift.baseline * 1e3:.3f} ms "
                f"(CUSUM {drift.statistic:.1f} >= {self.config.latency.h:g}); "
                f"likely cause: {self._latency_cause}",
                severity=severity,
                gates=gates,
                labels={"cause": self._latency_cause, "runner": self._runner},
                value=ratio,
            )
        self._latency_cause = "unknown"
        self._export(COND_LATENCY, None)
        return CheckResult.passed(
            COND_LATENCY,
            message=f"canary latency at its baseline {drift.baseline * 1e3:.3f} ms",
            severity=severity,
            gates=gates,
            value=self._latency_ratio,
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
        self._counter_series(uuid, kind, r.rate_per_hour, r.seconds_to_threshold)
        if r.rising and r.rate_per_hour is not None:
            self._export(name, (reason, kind))
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
        self._export(name, None)
        rate = "learning" if r.rate_per_hour is None else f"{r.rate_per_hour:.2f}/h"
        return CheckResult.passed(
            name,
            message=f"{what}: {rate} (value {value:g})",
            severity=severity,
            gates=gates,
            labels=labels,
            value=r.rate_per_hour,
        )

    def _counter_series(self, uuid: str, kind: str, rate: float | None, eta: float | None) -> None:
        """The rate and forecast series of one GPU counter; a value that is gone (no verdict,
        no forecast, the GPU left) removes its series instead of leaving a stale one."""
        for gauge, value in ((self.metrics.counter_rate, rate), (self.metrics.counter_forecast, eta)):
            if value is not None:
                gauge.labels(uuid, kind).set(value)
            else:
                with contextlib.suppress(KeyError):
                    gauge.remove(uuid, kind)
        if rate is None and eta is None:
            self._series.discard((uuid, kind))
        else:
            self._series.add((uuid, kind))

    def _export(self, subject: str, warning: tuple[str, str] | None) -> None:
        """One trt_health_trend_warning series per warning subject, removed when it clears."""
        before = self._warnings.get(subject)
        if before == warning:
            return
        if before is not None:
            with contextlib.suppress(KeyError):
                self.metrics.warning.remove(subject, *before)
            del self._warnings[subject]
        if warning is not None:
            self.metrics.warning.labels(subject, *warning).set(1)
            self._warnings[subject] = warning

    # -- cause ----------------------------------------------------------------------------
    def _fold_host(self, seconds: float) -> None:
        self.metrics.host_probe.set(seconds)
        self._host.append(seconds)
        if self._host_baseline is None and len(self._host) >= 20:
            self._host_baseline = statistics.median(self._host)

    def _note_violation(self, uuid: str, sample: GpuSample) -> None:
        now = (value_or_none(sample.power_violation_s), value_or_none(sample.thermal_violation_s))
        before = self._violation.get(uuid)
        self._violation[uuid] = now
        if before is None:
            return
        growth = [
            max(0.0, n - b) if n is not None and b is not None else 0.0
            for n, b in zip(now, before, strict=True)
        ]
        self._violation_delta[uuid] = (growth[0], growth[1])

    def _context(self) -> GpuContext:
        """GPU facts now (the worst over this pod's GPUs) for :func:`likely_cause`."""
        samples = dict(self.gpu_samples.latest_samples()) if self.gpu_samples is not None else {}
        reasons = 0
        temp = slowdown = util = None
        clock_ratio: float | None = None
        procs = 0
        power_delta = thermal_delta = 0.0
        for uuid, (_, s) in samples.items():
            reasons |= value_or_none(s.clock_event_reasons) or 0
            t = value_or_none(s.temperature_c)
            sd = value_or_none(s.slowdown_threshold_c)
            if t is not None and (temp is None or t > temp):
                temp, slowdown = float(t), None if sd is None else float(sd)
            u = value_or_none(s.utilization_gpu_pct)
            if u is not None:
                util = max(util or 0.0, u / 100.0)
            p = value_or_none(s.processes)
            if p is not None:
                procs = max(procs, max(0, len(p) - 1))  # the sidecar's own worker is one of them
            cur = value_or_none(s.sm_clock_mhz)
            top = value_or_none(s.sm_clock_max_mhz)
            if cur is not None and top:
                r = cur / top
                clock_ratio = r if clock_ratio is None else min(clock_ratio, r)
            dp, dt = self._violation_delta.get(uuid, (0.0, 0.0))
            power_delta, thermal_delta = max(power_delta, dp), max(thermal_delta, dt)
        host_ratio = None
        if self._host_baseline and self._host:
            recent = list(self._host)[-5:]
            host_ratio = statistics.median(recent) / self._host_baseline
        return GpuContext(
            clock_event_reasons=reasons if samples else None,
            power_violation_s_delta=power_delta,
            thermal_violation_s_delta=thermal_delta,
            sm_clock_ratio=clock_ratio,
            temperature_c=temp,
            slowdown_c=slowdown,
            other_processes=procs,
            utilization=util,
            host_launch_ratio=host_ratio,
        )

    # -- persistence (off the event loop) -------------------------------------------------
    def _read_state(self) -> Any:
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("trend history unreadable", extra={"file": str(self.path), "error": str(exc)[:200]})
            return None
        if len(data) > MAX_STATE_BYTES:
            log.warning("trend history too large, ignored", extra={"file": str(self.path)})
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            log.warning("trend history is not JSON, ignored", extra={"file": str(self.path)})
            return None

    def _write_state(self, state: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(state, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as exc:  # trends are advisory: losing history is reported, not fatal
            if not self._write_failing:  # once per failure streak, not every persist interval
                log.warning(
                    "trend history not written", extra={"file": str(self.path), "error": str(exc)[:200]}
                )
            self._write_failing = True
            return
        if self._write_failing:
            log.info("trend history written again", extra={"file": str(self.path)})
        self._write_failing = False


def _kind_of(subject: str) -> str:
    return subject.rsplit("/", 1)[-1]


def _counter_values(sample: GpuSample) -> dict[str, float]:
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
