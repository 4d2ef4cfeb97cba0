"""Value types shared by checks, policy and publishers. Pure: no I/O, no clock.

A *check* produces :class:`CheckResult` values. Each result names a *condition*
(``CheckResult.name``, unique across the process, e.g. ``gpu/GPU-1234/ecc``). The policy
folds consecutive results of one condition into a :class:`Condition` with kubelet-style
hysteresis, and aggregates conditions into the health *services* that
``grpc.health.v1`` publishes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Service names published through grpc.health.v1 (see DESIGN.md, "Services exposed").
SERVICE_OVERALL = ""
SERVICE_READINESS = "readiness"
SERVICE_LIVENESS = "liveness"
SERVICE_STARTUP = "startup"
SERVICE_WORKLOAD_LIVENESS = "workload-liveness"
SERVICE_GPU = "gpu"
SERVICE_CANARY = "canary"
SERVICE_ENGINE = "engine"


def gpu_service(uuid: str) -> str:
    """The per-GPU aggregate service name, ``gpu/<uuid>``."""
    return f"{SERVICE_GPU}/{uuid}"


def engine_service(name: str) -> str:
    """The per-engine aggregate service name, ``engine/<name>``."""
    return f"{SERVICE_ENGINE}/{name}"


class CheckStatus(enum.Enum):
    """Outcome of one run of a check (node-problem-detector's three outcomes)."""

    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


class Severity(enum.IntEnum):
    """What a *failing* result of a condition means for the services it gates.

    - ``INFO``: reported only (metrics, diagnostics); never gates anything.
    - ``WARNING``: reported loudly; never gates readiness.
    - ``CRITICAL``: gates the services it names after ``failure_threshold`` consecutive failures.
    - ``FATAL``: gates at once (no debounce); recovery still needs ``success_threshold`` passes.
    """

    INFO = 0
    WARNING = 1
    CRITICAL = 2
    FATAL = 3


_EMPTY: Mapping[str, str] = MappingProxyType({})


def _frozen(labels: Mapping[str, str] | None) -> Mapping[str, str]:
    return MappingProxyType(dict(labels)) if labels else _EMPTY


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One observation of one condition.

    ``gates`` lists the health services that this condition can turn NOT_SERVING when it fails
    with severity CRITICAL or FATAL. ``readiness`` (and so ``""``) is the usual one; per-layer
    services such as ``gpu/<uuid>`` or ``engine/<name>`` are added by the check.
    ``UNKNOWN`` results count as failures for gating (fail closed) but are reported as unknown.
    """

    name: str
    status: CheckStatus
    severity: Severity = Severity.CRITICAL
    reason: str = ""
    message: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    value: float | str | None = None
    gates: frozenset[str] = frozenset({SERVICE_READINESS})

    @property
    def ok(self) -> bool:
        return self.status is CheckStatus.OK

    @classmethod
    def passed(
        cls,
        name: str,
        *,
        message: str = "",
        reason: str = "",
        labels: Mapping[str, str] | None = None,
        value: float | str | None = None,
        gates: frozenset[str] = frozenset({SERVICE_READINESS}),
        severity: Severity = Severity.CRITICAL,
    ) -> CheckResult:
        return cls(name, CheckStatus.OK, severity, reason, message, _frozen(labels), value, gates)

    @classmethod
    def failed(
        cls,
        name: str,
        reason: str,
        message: str,
        *,
        severity: Severity = Severity.CRITICAL,
        labels: Mapping[str, str] | None = None,
        value: float | str | None = None,
        gates: frozenset[str] = frozenset({SERVICE_READINESS}),
        status: CheckStatus = CheckStatus.FAIL,
    ) -> CheckResult:
        return cls(name, status, severity, reason, message, _frozen(labels), value, gates)

    @classmethod
    def unknown(
        cls,
        name: str,
        reason: str,
        message: str,
        *,
        severity: Severity = Severity.CRITICAL,
        labels: Mapping[str, str] | None = None,
        gates: frozenset[str] = frozenset({SERVICE_READINESS}),
    ) -> CheckResult:
        return cls.failed(
            name,
            reason,
            message,
            severity=severity,
            labels=labels,
            gates=gates,
            status=CheckStatus.UNKNOWN,
        )


@dataclass(frozen=True, slots=True)
class Condition:
    """The debounced state of one condition, as published by diagnostics and /healthz.

    ``healthy`` is the established (post-hysteresis) state; ``None`` means "not yet
    established" (no threshold reached since start), which gates like a failure.
    """

    name: str
    healthy: bool | None
    last: CheckResult
    since: float  # clock time (the policy's clock, monotonic in the app) of the last state change
    last_result_at: float
    consecutive_failures: int
    consecutive_successes: int

    @property
    def gating(self) -> bool:
        """True when this condition currently holds its services NOT_SERVING."""
        return self.last.severity >= Severity.CRITICAL and self.healthy is not True


@dataclass(frozen=True, slots=True)
class ServiceVerdict:
    """Whether one health service is SERVING, and why not."""

    service: str
    serving: bool
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of a condition's established state (logged once, counted in metrics)."""

    condition: str
    healthy: bool | None
    previous: bool | None
    reason: str
    message: str
    at: float
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    severity: Severity = Severity.CRITICAL
