"""The HTTP endpoints' view of the verdict: the /healthz document (overall status, every
service, every condition with its reason) and what /readyz and /livez answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.core.protocols import Publication
from sidecar.core.values import SERVICE_LIVENESS, SERVICE_OVERALL, Condition
from sidecar.publish.diagnostics import check_entry, service_entry
from sidecar.publish.http import HttpSnapshot, healthz_document

HEALTHZ_SERVICE = "trt-health-sidecar"


def healthz_checks(conditions: Sequence[Condition]) -> dict[str, Any]:
    """The ``checks`` of the /healthz document: one entry per condition."""
    checks: dict[str, Any] = {}
    for c in conditions:
        checks[c.name] = check_entry(
            status=c.last.status,
            established=c.healthy,
            gating=c.gating,
            severity=c.last.severity.name.lower(),
            reason=c.last.reason,
            message=c.last.message,
            labels=c.last.labels,
            value=c.last.value,
        )
    return checks


class HealthzPublisher:
    """Publisher: the :class:`HttpSnapshot` the HTTP server serves, replaced whole on every
    publication. The conditions' entries are built once per verdict of the loop (the
    watchdog's liveness hold reuses them)."""

    def __init__(self) -> None:
        self._snapshot = HttpSnapshot()
        self._checks_of: Sequence[Condition] | None = None
        self._checks: dict[str, Any] = {}

    def publish(self, publication: Publication, only: str | None = None) -> None:
        if publication.conditions is not self._checks_of:
            self._checks = healthz_checks(publication.conditions)
            self._checks_of = publication.conditions
        verdicts = publication.verdicts
        serving = {name: v.serving for name, v in verdicts.items()}
        services = {name: service_entry(v.serving, v.reasons) for name, v in sorted(verdicts.items())}
        ready = serving.get(SERVICE_OVERALL, False)
        self._snapshot = HttpSnapshot(
            ready=ready,
            live=serving.get(SERVICE_LIVENESS, False),
            body=healthz_document(HEALTHZ_SERVICE, ready, services, self._checks),
            services=serving,
        )

    def snapshot(self) -> HttpSnapshot:
        """Thread-safe: the latest snapshot (HTTP server threads)."""
        return self._snapshot
