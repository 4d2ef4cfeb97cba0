"""Health policy: per-condition hysteresis and aggregation into health services.

Pure code: no I/O, no clock (``now`` is passed in), so every rule is tested as a table.

Hysteresis follows the kubelet's prober (``prober/worker.go``): consecutive identical results
are counted, and the established state changes only when ``failure_threshold`` failures or
``success_threshold`` successes in a row are reached. Two additions for GPU faults:

- a failing result with severity FATAL establishes "unhealthy" at once (no debounce);
- after a FATAL episode, recovery needs ``fatal_recovery_threshold`` passes in a row (evidence,
  never a timeout).

The sidecar's own debounce is deliberately short (defaults 1/1): the kubelet adds
``periodSeconds x failureThreshold`` on top, and stacking two long debounces only delays
detection. See docs/probes.md for the sum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sidecar.core.values import (
    SERVICE_LIVENESS,
    SERVICE_OVERALL,
    SERVICE_READINESS,
    SERVICE_STARTUP,
    SERVICE_WORKLOAD_LIVENESS,
    CheckResult,
    CheckStatus,
    Condition,
    ServiceVerdict,
    Severity,
    Transition,
)

# Services that always exist, whatever the checks.
CORE_SERVICES = (
    SERVICE_OVERALL,
    SERVICE_READINESS,
    SERVICE_LIVENESS,
    SERVICE_STARTUP,
    SERVICE_WORKLOAD_LIVENESS,
)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Kubelet-style thresholds for one condition."""

    failure_threshold: int = 1
    success_threshold: int = 1
    fatal_recovery_threshold: int = 3


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Default thresholds plus per-condition overrides, matched by longest name prefix."""

    defaults: Thresholds = Thresholds()
    overrides: Mapping[str, Thresholds] = field(default_factory=dict)

    def thresholds_for(self, condition: str) -> Thresholds:
        best = ""
        for prefix in self.overrides:
            if condition.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        return self.overrides[best] if best else self.defaults


class ConditionTracker:
    """Consecutive-result counter for one condition."""

    __slots__ = (
        "failures",
        "fatal_episode",
        "healthy",
        "last",
        "last_at",
        "name",
        "severity",
        "since",
        "successes",
        "thresholds",
    )

    def __init__(self, name: str, thresholds: Thresholds, first: CheckResult, now: float) -> None:
        self.name = name
        self.thresholds = thresholds
        self.healthy: bool | None = None
        self.failures = 0
        self.successes = 0
        self.fatal_episode = False
        self.severity = first.severity
        self.last = first
        self.last_at = now
        self.since = now

    def observe(self, result: CheckResult, now: float) -> Transition | None:
        """Fold one result in. Returns a Transition when the established state changed."""
        previous = self.healthy
        self.last = result
        self.last_at = now
        th = self.thresholds
        if result.status is CheckStatus.OK:
            self.successes += 1
            self.failures = 0
            needed = th.fatal_recovery_threshold if self.fatal_episode else th.success_threshold
            if self.healthy is not True and self.successes >= needed:
                self.healthy = True
                self.fatal_episode = False
            if self.healthy is not False:
                self.severity = result.severity
        else:
            self.failures += 1
            self.successes = 0
            self.severity = result.severity
            if result.severity >= Severity.FATAL:
                self.fatal_episode = True
                self.healthy = False
            elif self.failures >= th.failure_threshold:
                self.healthy = False
        if self.healthy is previous:
            return None
        self.since = now
        return Transition(
            condition=self.name,
            healthy=self.healthy,
            previous=previous,
            reason=result.reason,
            message=result.message,
            at=now,
            labels=result.labels,
            severity=self.severity,
        )

    @property
    def gating(self) -> bool:
        return self.healthy is not True and self.severity >= Severity.CRITICAL

    def snapshot(self) -> Condition:
        return Condition(
            name=self.name,
            healthy=self.healthy,
            last=self.last,
            since=self.since,
            last_result_at=self.last_at,
            consecutive_failures=self.failures,
            consecutive_successes=self.successes,
        )


class HealthPolicy:
    """All condition trackers, and the aggregation of conditions into services.

    Aggregation rules:

    - ``startup``: SERVING once the process is initialised (config valid, servers up, loops
      running). Never depends on any check.
    - ``liveness``: SERVING while the sidecar's own loops beat (``set_liveness``). Never depends
      on a GPU check.
    - ``readiness`` and ``""``: SERVING when started, no check is still pending its first
      result, and no condition gating ``readiness`` is failing (CRITICAL past its threshold,
      FATAL at once, or not yet established).
    - ``workload-liveness`` and every per-layer service (``gpu``, ``gpu/<uuid>``, ``canary``,
      ``engine/<name>``): SERVING when no condition gating it is failing. Per-layer services
      appear when a condition first names them.
    """

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self._trackers: dict[str, ConditionTracker] = {}
        self._pending: set[str] = set()
        self._started = False
        self._live = True
        self._live_reason = ""
        self._shutting_down = False
        self._services: set[str] = set(CORE_SERVICES)

    # -- inputs ---------------------------------------------------------------------------
    def expect(self, check_names: Iterable[str]) -> None:
        """Declare checks whose first result readiness must wait for (reason ``Starting``)."""
        self._pending.update(check_names)

    def settle(self, check_name: str) -> None:
        """A check produced its first result (or was removed)."""
        self._pending.discard(check_name)

    def set_started(self, started: bool) -> None:
        self._started = started

    def set_liveness(self, alive: bool, reason: str = "") -> None:
        self._live = alive
        self._live_reason = reason

    def set_shutting_down(self) -> None:
        """Every service NOT_SERVING from now on (SIGTERM)."""
        self._shutting_down = True

    def reconfigure(self, config: PolicyConfig) -> None:
        self.config = config
        for name, tracker in self._trackers.items():
            tracker.thresholds = config.thresholds_for(name)

    def forget(self, condition_names: Iterable[str]) -> None:
        """Drop conditions whose source went away (e.g. an engine removed from config)."""
        for name in condition_names:
            self._trackers.pop(name, None)

    def forget_services(self, services: Iterable[str]) -> list[str]:
        """Drop per-layer services that no remaining condition gates (never a core service);
        returns the ones dropped."""
        gated = {s for t in self._trackers.values() for s in t.last.gates}
        gone = sorted(
            s for s in set(services) if s in self._services and s not in CORE_SERVICES and s not in gated
        )
        self._services.difference_update(gone)
        return gone

    def observe(self, results: Iterable[CheckResult], now: float) -> list[Transition]:
        transitions = []
        for result in results:
            tracker = self._trackers.get(result.name)
            if tracker is None:
                tracker = ConditionTracker(
                    result.name, self.config.thresholds_for(result.name), result, now
                )
                self._trackers[result.name] = tracker
            self._services.update(result.gates)
            t = tracker.observe(result, now)
            if t is not None:
                transitions.append(t)
        return transitions

    # -- outputs --------------------------------------------------------------------------
    def conditions(self) -> list[Condition]:
        return [t.snapshot() for t in sorted(self._trackers.values(), key=lambda t: t.name)]

    def services(self) -> list[str]:
        return sorted(self._services)

    def verdicts(self) -> dict[str, ServiceVerdict]:
        blocking: dict[str, list[str]] = {}
        for tracker in self._trackers.values():
            if tracker.gating:
                reason = tracker.last.reason or "Failing"
                for service in tracker.last.gates:
                    blocking.setdefault(service, []).append(f"{tracker.name}: {reason}")
        out: dict[str, ServiceVerdict] = {}
        down: tuple[str, ...] = ("ShuttingDown",) if self._shutting_down else ()
        for service in self._services:
            reasons: tuple[str, ...]
            if service in (SERVICE_OVERALL, SERVICE_READINESS):
                continue
            if service == SERVICE_STARTUP:
                reasons = down or (() if self._started else ("Initialising",))
            elif service == SERVICE_LIVENESS:
                reasons = down or (() if self._live else (self._live_reason or "LoopStalled",))
            else:
                reasons = down or tuple(sorted(blocking.get(service, ())))
            out[service] = ServiceVerdict(service, not reasons, reasons)
        if self._shutting_down:
            ready_reasons: tuple[str, ...] = down
        elif not self._started:
            ready_reasons = ("Starting",)
        else:
            pending = tuple(f"{name}: Starting" for name in sorted(self._pending))
            ready_reasons = pending + tuple(sorted(blocking.get(SERVICE_READINESS, ())))
        for service in (SERVICE_OVERALL, SERVICE_READINESS):
            out[service] = ServiceVerdict(service, not ready_reasons, ready_reasons)
        return out
