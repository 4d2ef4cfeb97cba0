"""The sidecar's own Diagnostics RPC: every condition with its reason, since when, and value."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc

from sidecar import __version__
from sidecar.core.protocols import Publication
from sidecar.core.values import CheckStatus, Condition, ServiceVerdict
from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc

_STATUS = {
    CheckStatus.OK: diagnostics_pb2.Condition.OK,
    CheckStatus.FAIL: diagnostics_pb2.Condition.FAIL,
    CheckStatus.UNKNOWN: diagnostics_pb2.Condition.UNKNOWN,
}


def condition_to_proto(c: Condition, now_wall: float, now_mono: float) -> Any:
    """Convert a Condition (monotonic times) into the wire message (wall-clock seconds)."""
    msg = diagnostics_pb2.Condition(
        name=c.name,
        status=_STATUS[c.last.status],
        established=(
            diagnostics_pb2.Condition.ESTABLISHED_UNSPECIFIED
            if c.healthy is None
            else diagnostics_pb2.Condition.HEALTHY
            if c.healthy
            else diagnostics_pb2.Condition.UNHEALTHY
        ),
        severity=c.last.severity.name.lower(),
        reason=c.last.reason,
        message=c.last.message,
        since_unix=now_wall - (now_mono - c.since),
        last_result_unix=now_wall - (now_mono - c.last_result_at),
        gates=sorted(c.last.gates),
        gating=c.gating,
        consecutive_failures=c.consecutive_failures,
        consecutive_successes=c.consecutive_successes,
    )
    msg.labels.update(dict(c.last.labels))
    if isinstance(c.last.value, int | float):
        msg.number = float(c.last.value)
    elif isinstance(c.last.value, str):
        msg.text = c.last.value
    return msg


def build_response(
    conditions: Iterable[Condition],
    verdicts: Mapping[str, ServiceVerdict],
    *,
    prefix: str,
    now_mono: float,
    started_unix: float,
    simulated: bool,
) -> Any:
    now_wall = time.time()
    resp = diagnostics_pb2.ConditionsResponse(
        version=__version__, started_unix=started_unix, simulated=simulated
    )
    for c in conditions:
        if c.name.startswith(prefix):
            resp.conditions.append(condition_to_proto(c, now_wall, now_mono))
    for name in sorted(verdicts):
        v = verdicts[name]
        resp.services.append(
            diagnostics_pb2.ServiceStatus(name=name, serving=v.serving, reasons=list(v.reasons))
        )
    return resp


def check_entry(
    *,
    status: CheckStatus,
    established: bool | None,
    gating: bool,
    severity: str,
    reason: str,
    message: str,
    labels: Mapping[str, str],
    value: Any,
) -> dict[str, Any]:
    """One entry of the health document's ``checks`` (/healthz and ``status --json``)."""
    entry: dict[str, Any] = {
        "ok": status is CheckStatus.OK,
        "status": status.value,
        "established": established,
        "gating": gating,
        "severity": severity,
        "reason": reason,
        "message": message,
    }
    if labels:
        entry["labels"] = dict(labels)
    if value is not None:
        entry["value"] = value
    return entry


def service_entry(serving: bool, reasons: Iterable[str]) -> dict[str, Any]:
    """One entry of the health document's ``services``."""
    return {"status": "SERVING" if serving else "NOT_SERVING", "reasons": list(reasons)}


_FROM_WIRE = {v: k for k, v in _STATUS.items()}


def document_parts(resp: Any) -> tuple[bool, dict[str, Any], dict[str, Any]]:
    """(ready, services, checks) of the health document, from a ConditionsResponse: what
    ``status --json`` prints is the /healthz document, built by the same functions."""
    services = {s.name: service_entry(s.serving, s.reasons) for s in resp.services}
    checks: dict[str, Any] = {}
    for c in resp.conditions:
        which = c.WhichOneof("value")
        checks[c.name] = check_entry(
            status=_FROM_WIRE.get(c.status, CheckStatus.UNKNOWN),
            established=(
                None
                if c.established == diagnostics_pb2.Condition.ESTABLISHED_UNSPECIFIED
                else c.established == diagnostics_pb2.Condition.HEALTHY
            ),
            gating=c.gating,
            severity=c.severity,
            reason=c.reason,
            message=c.message,
            labels=dict(c.labels),
            value=getattr(c, which) if which else None,
        )
    overall = services.get("", {}).get("status") == "SERVING"
    return overall, services, checks


Snapshot = Callable[[], tuple[Sequence[Condition], Mapping[str, ServiceVerdict]]]


class LatestVerdict:
    """Publisher: the newest conditions and verdicts, replaced whole, read by the
    Diagnostics RPC threads (and anything else that wants the verdict as it is served)."""

    def __init__(self) -> None:
        self._latest: tuple[Sequence[Condition], Mapping[str, ServiceVerdict]] = ([], {})

    def publish(self, publication: Publication, only: str | None = None) -> None:
        self._latest = (publication.conditions, publication.verdicts)

    def __call__(self) -> tuple[Sequence[Condition], Mapping[str, ServiceVerdict]]:
        return self._latest


class DiagnosticsService(diagnostics_pb2_grpc.DiagnosticsServicer):
    def __init__(
        self,
        snapshot: Snapshot,
        *,
        monotonic: Callable[[], float],
        started_unix: float,
        simulated: bool,
    ) -> None:
        self._snapshot = snapshot
        self._monotonic = monotonic
        self._started_unix = started_unix
        self._simulated = simulated

    def GetConditions(self, request: Any, context: grpc.ServicerContext) -> Any:
        conditions, verdicts = self._snapshot()
        return build_response(
            conditions,
            verdicts,
            prefix=request.prefix,
            now_mono=self._monotonic(),
            started_unix=self._started_unix,
            simulated=self._simulated,
        )
