"""The sidecar's own Prometheus metrics: conditions, services, transitions, check runs, reloads,
loop lag, and the collectors of the health service's plain counters and of each component
section's registry. :class:`CoreMetrics` is a :class:`~sidecar.core.protocols.Publisher`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.core.protocols import Publication
from sidecar.core.values import SERVICE_READINESS, Condition, Transition
from sidecar.publish.grpc_health import HealthService


class RpcCollector(Collector):
    """Exports the hot-path plain counters of the health service."""

    def __init__(self, service: HealthService) -> None:
        self._service = service

    def collect(self) -> Iterable[Any]:
        calls = CounterMetricFamily(
            "trt_health_grpc_requests",
            "grpc.health.v1 RPCs handled, by method and status code",
            labels=["method", "code"],
        )
        for (method, code), n in sorted(self._service.stats.calls.items()):
            calls.add_metric([method, code], n)
        yield calls
        yield GaugeMetricFamily(
            "trt_health_watch_streams",
            "Open Watch streams",
            value=self._service.stats.watchers_open,
        )
        yield CounterMetricFamily(
            "trt_health_watch_rejected",
            "Watch streams refused with RESOURCE_EXHAUSTED (cap reached)",
            value=self._service.stats.watch_rejected,
        )
        yield CounterMetricFamily(
            "trt_health_watch_stuck_cancelled",
            "Watch streams cancelled because a send stayed blocked (client stopped reading)",
            value=self._service.stats.watch_stuck_cancelled,
        )


class SectionCollectors(Collector):
    """Forwards to each section's registry of component metrics (replaced on reload, so a
    rebuilt component registers its metrics again without clashing with the old ones)."""

    def __init__(self) -> None:
        self.targets: dict[str, CollectorRegistry] = {}

    def collect(self) -> Iterable[Any]:
        for registry in list(self.targets.values()):
            yield from registry.collect()


class CoreMetrics:
    """The metrics of the serving core. As a publisher it keeps one ``condition_ok`` series
    per condition (labelled with its current severity), the gating series and the readiness
    reasons in step with the published verdict."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.condition_ok = Gauge(
            "trt_health_condition_ok",
            "Established state per condition: 1 healthy, 0 unhealthy, -1 not yet established",
            ["condition", "severity"],
            registry=registry,
        )
        self.condition_gating = Gauge(
            "trt_health_condition_gating",
            "1 while the condition holds its services NOT_SERVING",
            ["condition"],
            registry=registry,
        )
        self.readiness_reason = Gauge(
            "trt_health_readiness_reason",
            "1 for each reason holding readiness NOT_SERVING now (absent otherwise)",
            ["reason"],
            registry=registry,
        )
        self.service_serving = Gauge(
            "trt_health_service_serving",
            "1 when the grpc.health.v1 service is SERVING",
            ["service"],
            registry=registry,
        )
        self.transitions = Counter(
            "trt_health_transitions",
            "Changes of a condition's established state",
            ["condition", "to", "reason"],
            registry=registry,
        )
        self.check_duration = Histogram(
            "trt_health_check_duration_seconds",
            "Wall time of one check run",
            ["check"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 120),
            registry=registry,
        )
        self.check_runs = Counter(
            "trt_health_check_runs",
            "Check runs by outcome (ok, fail, timeout, inflight, late, error)",
            ["check", "outcome"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "trt_health_config_reloads",
            "Config reload attempts by result (applied, rejected, unchanged)",
            ["result"],
            registry=registry,
        )
        self.loop_lag = Gauge(
            "trt_health_event_loop_lag_seconds",
            "How late the last heartbeat woke up (event loop responsiveness)",
            registry=registry,
        )
        self.build = Gauge("trt_health_build_info", "Version of the sidecar", ["version"], registry=registry)
        self.build.labels(__version__).set(1)
        self._ok_series: dict[str, str] = {}  # condition -> severity label of its ok series
        self._reason_series: set[str] = set()  # readiness reasons with a metric series

    def record_run(self, check: str, outcome: str, seconds: float) -> None:
        self.check_runs.labels(check, outcome).inc()
        if outcome in ("ok", "fail", "error", "late"):
            self.check_duration.labels(check).observe(seconds)

    def record_transition(self, t: Transition, to: str) -> None:
        self.transitions.labels(t.condition, to, t.reason or "").inc()

    def publish(self, publication: Publication, only: str | None = None) -> None:
        """Publisher: the service series written (``only``: that one); the condition and
        readiness-reason series follow the loop's verdicts (the watchdog changes neither)."""
        verdicts = publication.verdicts
        written = verdicts if only is None else {only: verdicts[only]}
        for name, v in written.items():
            self.service_serving.labels(name).set(1 if v.serving else 0)
        if only is None:
            readiness = verdicts.get(SERVICE_READINESS)
            self._readiness_reasons(readiness.reasons if readiness is not None else ())
            self._conditions(publication.conditions)

    def _conditions(self, conditions: Sequence[Condition]) -> None:
        for c in conditions:
            severity = c.last.severity.name.lower()
            previous = self._ok_series.get(c.name)
            if previous is not None and previous != severity:
                # one series per condition: drop the one labelled with the old severity
                self.condition_ok.remove(c.name, previous)
            self._ok_series[c.name] = severity
            self.condition_ok.labels(c.name, severity).set(
                -1 if c.healthy is None else (1 if c.healthy else 0)
            )
            self.condition_gating.labels(c.name).set(1 if c.gating else 0)

    def drop_conditions(self, names: Iterable[str]) -> None:
        """Conditions that left the policy leave with their state series (transition
        counters are history and stay)."""
        for name in names:
            severity = self._ok_series.pop(name, None)
            if severity is not None:
                self.condition_ok.remove(name, severity)
                self.condition_gating.remove(name)

    def _readiness_reasons(self, reasons: Sequence[str]) -> None:
        """``trt_health_readiness_reason{reason}`` is 1 for each machine-readable reason that
        holds readiness NOT_SERVING now (``gpu/<uuid>/xid: XidFatal79`` -> ``XidFatal79``); a
        series goes when its reason does. Bounded: reasons are codes, not free text."""
        now = {r.rsplit(": ", 1)[-1][:64] for r in reasons}
        for gone in self._reason_series - now:
            self.readiness_reason.remove(gone)
        for reason in now - self._reason_series:
            self.readiness_reason.labels(reason).set(1)
        self._reason_series = now
