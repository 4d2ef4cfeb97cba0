"""Metrics of the actions component (one registry per component instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ActionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "trt_health_actions",
            "Actions on the main server by engine, kind (rollback, release, degrade, restore) "
            "and outcome (ok, failed, dry_run)",
            ["engine", "action", "outcome"],
            registry=registry,
        )
        self.seconds = Gauge(
            "trt_health_action_seconds",
            "Of the last action: from the verdict that caused it to the server state verified",
            ["engine", "action"],
            registry=registry,
        )
        self.degraded = Gauge(
            "trt_health_degraded",
            "1 while the main server serves the engine's fallback",
            ["engine"],
            registry=registry,
        )
        self.rolled_back = Gauge(
            "trt_health_rolled_back",
            "1 while the main server is pinned to the last good version of the engine",
            ["engine"],
            registry=registry,
        )
