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

The parts: the pure fold in :mod:`sidecar.trends.tracker` (the detectors in
:mod:`sidecar.trends.detectors`, the cause in :mod:`sidecar.trends.cause`), the history file in
:mod:`sidecar.trends.history`, the series in :mod:`sidecar.trends.metrics`; this module wires them
and owns the check, the host probe and when to persist.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry

from sidecar.core.protocols import Check, Clock, ResultSink
from sidecar.core.values import CheckResult
from sidecar.gpu.backend import GpuSample
from sidecar.trends.config import TrendsConfig
from sidecar.trends.detectors import TrendBook
from sidecar.trends.history import TrendHistory
from sidecar.trends.metrics import TrendMetrics
from sidecar.trends.tracker import TrendTracker, kind_of

log = logging.getLogger(__name__)

CHECK_NAME = "trends"


class GpuSamples(Protocol):
    """What the trends component asks the GPU component: its latest samples, no driver call."""

    def latest_samples(self) -> Mapping[str, tuple[float, GpuSample]]:
        """uuid -> (wall time of the sample, sample), for the GPUs in the inventory."""
        ...


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


def _no_samples() -> Mapping[str, tuple[float, GpuSample]]:
    return {}


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
        wall: Clock = time.time,
    ) -> None:
        self.config = config
        self.metrics = TrendMetrics(registry)
        self.history = TrendHistory(state_dir / config.state_file)
        self.path = self.history.path
        self.tracker = TrendTracker(
            config, gpu_samples.latest_samples if gpu_samples is not None else _no_samples
        )
        self.wall = wall
        self._last_persist = 0.0
        self._sink: ResultSink | None = None

    @property
    def book(self) -> TrendBook:
        """The detectors and their persisted state."""
        return self.tracker.book

    # -- Component ------------------------------------------------------------------------
    def checks(self) -> Sequence[Check]:
        return [TrendCheck(self)] if self.config.enabled else []

    async def start(self, sink: ResultSink) -> None:
        self._sink = sink
        if self.config.enabled:
            state = await asyncio.to_thread(self.history.read)
            if state is not None and not self.book.restore(state, kind_of=kind_of):
                log.warning("trend history not restored: unknown format", extra={"file": str(self.path)})

    async def stop(self) -> None:
        if self.config.enabled:
            await asyncio.to_thread(self.history.write, self.book.to_state())

    # -- inputs ---------------------------------------------------------------------------
    def observe(self, results: Iterable[CheckResult]) -> None:
        """Told every result the app records (on the event loop; cheap, no I/O)."""
        for note in self.tracker.observe(results):
            self.metrics.latency(note.reading)
            if note.started_cause is not None:
                log.warning(
                    "canary latency drift",
                    extra={
                        "ratio": note.reading.ratio,
                        "baseline_s": note.reading.baseline,
                        "cause": note.started_cause,
                    },
                )

    async def evaluate(self, host_probe_s: float) -> list[CheckResult]:
        """One run of the ``trends`` check: fold the GPU samples, report every subject."""
        self.metrics.host_probe.set(host_probe_s)
        results = self.tracker.fold(host_probe_s)
        self.metrics.show(self.tracker.warnings, self.tracker.series)
        now = self.wall()
        if now - self._last_persist >= self.config.persist_interval_s:
            self._last_persist = now
            await asyncio.to_thread(self.history.write, self.book.to_state())
        return results
