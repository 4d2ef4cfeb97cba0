"""The workload probe component: the main server's own API, asked a question with a known answer.

Two conditions:

- ``workload`` (gates ``readiness`` when ``gate_readiness``): fails on each failed probe; the
  policy's thresholds debounce it like any other condition.
- ``workload/liveness`` (gates ``workload-liveness``, for a livenessProbe on the *main*
  container): fails only after ``failure_threshold`` consecutive failed probes, and then with
  severity FATAL so the policy does not stack a second threshold on top. While the GPU layer
  is at fault (``gpu_state.gpu_fault()``) it stays OK with reason ``GpuFaultNotRestartable``
  and the count restarts: restarting the main container never fixes a GPU.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.core.protocols import Check, GpuStateView, ResultSink
from sidecar.core.values import (
    SERVICE_READINESS,
    SERVICE_WORKLOAD_LIVENESS,
    CheckResult,
    CheckStatus,
    Severity,
)
from sidecar.workload.config import WorkloadConfig, parse_workload_config
from sidecar.workload.probes import TIMEOUT, ProbeOutcome, WorkloadProbe, make_probe

log = logging.getLogger(__name__)

__all__ = ["WorkloadCheck", "WorkloadComponent", "parse_workload_config"]

CONDITION = "workload"
LIVENESS_CONDITION = "workload/liveness"


class WorkloadCheck:
    """The polled probe; ``run`` returns the ``workload`` and ``workload/liveness`` results."""

    name = "workload"

    def __init__(self, component: WorkloadComponent) -> None:
        self._c = component
        self.interval_s = component.config.interval_s
        # The probe enforces cfg.timeout itself; the scheduler's deadline is a backstop.
        self.timeout_s = component.config.timeout_s + 1.0

    async def run(self) -> Sequence[CheckResult]:
        outcome = await self._c.probe_once()
        return self._c.results(outcome)

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return self._c.results(
            ProbeOutcome(TIMEOUT, f"probe still running after {elapsed_s:.1f}s", elapsed_s)
        )


class WorkloadComponent:
    """Sends the configured probe every ``interval``; see the module docstring for results."""

    name = "workload"

    def __init__(
        self,
        config: WorkloadConfig,
        *,
        registry: CollectorRegistry,
        gpu_state: GpuStateView | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.gpu_state = gpu_state
        self._transport = transport
        self._probe: WorkloadProbe | None = None
        self._check = WorkloadCheck(self)
        self.consecutive_failures = 0
        self.m_latency = Histogram(
            "trt_health_workload_probe_seconds",
            "Latency of the workload probe (whole request, readiness + inference)",
            ["kind"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=registry,
        )
        self.m_probes = Counter(
            "trt_health_workload_probes",
            "Workload probes by outcome (reason, or ok)",
            ["kind", "outcome"],
            registry=registry,
        )
        self.m_failures = Gauge(
            "trt_health_workload_consecutive_failures",
            "Consecutive failed workload probes (workload-liveness fails at failure_threshold)",
            registry=registry,
        )

    def checks(self) -> Sequence[Check]:
        return [self._check] if self.config.enabled else []

    async def start(self, sink: ResultSink) -> None:
        if not self.config.enabled:
            return
        # the HTTP client loads the CA bundle: on a thread
        self._probe = await asyncio.to_thread(make_probe, self.config, transport=self._transport)
        sink.submit(
            [
                CheckResult.unknown(
                    CONDITION,
                    "Starting",
                    "workload probe not run yet",
                    gates=self._gates(),
                    severity=self._severity(),
                    labels=self._labels(),
                )
            ]
        )
        sink.trigger(self._check.name)

    async def stop(self) -> None:
        if self._probe is not None:
            await self._probe.close()
            self._probe = None

    async def probe_once(self) -> ProbeOutcome:
        if self._probe is None:
            self._probe = await asyncio.to_thread(make_probe, self.config, transport=self._transport)
        outcome = await self._probe.probe()
        kind = self.config.kind
        self.m_latency.labels(kind=kind).observe(outcome.latency_s)
        self.m_probes.labels(kind=kind, outcome=outcome.reason or "ok").inc()
        return outcome

    def _gates(self) -> frozenset[str]:
        return frozenset({SERVICE_READINESS}) if self.config.gate_readiness else frozenset()

    def _severity(self) -> Severity:
        return Severity.CRITICAL if self.config.gate_readiness else Severity.WARNING

    def _labels(self) -> dict[str, str]:
        cfg = self.config
        return {
            "kind": cfg.kind,
            "endpoint": cfg.target if cfg.kind == "kserve-grpc" else cfg.url,
            "model": cfg.model,
        }

    def _gpu_fault(self) -> bool:
        if self.gpu_state is None:
            return False
        try:
            return bool(self.gpu_state.gpu_fault())
        except Exception:
            log.exception("gpu_state.gpu_fault() failed")
            return False

    def results(self, outcome: ProbeOutcome) -> list[CheckResult]:
        """Fold one probe outcome into the two conditions (updates the failure count)."""
        cfg = self.config
        labels = self._labels()
        value = round(outcome.latency_s, 6)
        if outcome.ok:
            ready = CheckResult.passed(
                CONDITION,
                message=outcome.message,
                labels=labels,
                value=value,
                gates=self._gates(),
                severity=self._severity(),
            )
        else:
            ready = CheckResult.failed(
                CONDITION,
                outcome.reason,
                outcome.message,
                labels=labels,
                value=value,
                gates=self._gates(),
                severity=self._severity(),
            )
        live_gates = frozenset({SERVICE_WORKLOAD_LIVENESS})
        if self._gpu_fault():
            if self.consecutive_failures:
                log.info("workload failures while the GPU is at fault: not restart-worthy")
            self.consecutive_failures = 0
            self.m_failures.set(0)
            live = CheckResult.passed(
                LIVENESS_CONDITION,
                reason="GpuFaultNotRestartable",
                message="the GPU layer is at fault; restarting the main container would not help",
                labels=labels,
                gates=live_gates,
                severity=Severity.FATAL,
            )
            return [ready, live]
        if outcome.ok:
            self.consecutive_failures = 0
        else:
            self.consecutive_failures += 1
        self.m_failures.set(self.consecutive_failures)
        n, limit = self.consecutive_failures, cfg.failure_threshold
        if n >= limit:
            if n == limit:
                log.error(
                    "workload failed repeatedly while the GPU layer is fine: workload-liveness "
                    "NOT_SERVING (restart the main container)",
                    extra={"reason": outcome.reason, "failures": n},
                )
            live = CheckResult.failed(
                LIVENESS_CONDITION,
                outcome.reason,
                f"{n} consecutive failures (threshold {limit}): {outcome.message}",
                labels=labels,
                gates=live_gates,
                severity=Severity.FATAL,
                value=float(n),
            )
        else:
            msg = "answering" if outcome.ok else f"{n} of {limit} failures: {outcome.message}"
            live = CheckResult(
                name=LIVENESS_CONDITION,
                status=CheckStatus.OK,
                severity=Severity.FATAL,
                reason="" if outcome.ok else outcome.reason,
                message=msg,
                labels=labels,
                value=float(n),
                gates=live_gates,
            )
        return [ready, live]
