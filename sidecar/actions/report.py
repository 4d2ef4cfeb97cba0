"""What an action leaves behind: the log line, the metrics, the announced transition (Event)
and the two conditions of each engine (``degraded/<engine>``, ``actions/<engine>/rollback``)
whose labels carry the versions and the last action (Diagnostics, /healthz). Pure but for
the log and the metrics it is given."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.actions.config import EngineActions
from sidecar.actions.degrade import DegradeMachine
from sidecar.actions.metrics import ActionMetrics
from sidecar.actions.rollback import DEGRADE, RELEASE, RESTORE, ROLLBACK, RollbackMachine
from sidecar.core.values import CheckResult, CheckStatus, Severity, Transition

log = logging.getLogger("sidecar.actions.component")

SERVICE_PRIMARY = "primary"
GATES = frozenset({SERVICE_PRIMARY})
ACTION_REASONS = {
    ROLLBACK: "EngineRolledBack",
    RELEASE: "EngineRolledForward",
    DEGRADE: "ServingFallback",
    RESTORE: "RestoredPrimary",
}
FAILING_ROLLBACK = ("RolledBack", "RollbackPending", "NoGoodVersion", "RollbackGaveUp", "RollbackFlapping")


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One action taken (or, in dry-run, that would have been)."""

    engine: str
    model: str
    kind: str
    target: str | None
    previous: str | None
    evidence: str
    outcome: str  # ok | failed | dry_run
    calls: str
    server: str  # what the server serves afterwards
    verdict_at: float  # when the evidence that caused it was first seen
    started_at: float
    called_at: float
    verified_at: float

    @property
    def total_s(self) -> float:
        return self.verified_at - self.verdict_at


def report_action(
    rec: ActionRecord, metrics: ActionMetrics, announce: Callable[[Transition], None] | None
) -> None:
    """The log line, the metrics and (but for a successful switch, which is the degraded
    condition's own transition) the announced transition of one action."""
    metrics.actions.labels(rec.engine, rec.kind, rec.outcome).inc()
    if rec.outcome == "ok":
        metrics.seconds.labels(rec.engine, rec.kind).set(rec.total_s)
    reason = ACTION_REASONS.get(rec.kind, "EngineAction")
    if rec.outcome == "dry_run":
        reason = "DryRun" + reason
    elif rec.outcome == "failed":
        reason = reason + "Failed"
    to = rec.target or "the repository's versions"
    message = (
        f"{rec.kind} {rec.model} to {to} (was {rec.previous or '-'}): {rec.outcome}; "
        f"evidence: {rec.evidence}; calls: {rec.calls}; server: {rec.server}"
    )
    level = logging.WARNING if rec.outcome != "ok" or rec.kind in (ROLLBACK, DEGRADE) else logging.INFO
    log.log(
        level,
        "engine action",
        extra={
            "engine": rec.engine,
            "model": rec.model,
            "action": rec.kind,
            "target": rec.target,
            "previous": rec.previous,
            "outcome": rec.outcome,
            "evidence": rec.evidence,
            "calls": rec.calls,
            "server": rec.server,
            "seconds": round(rec.total_s, 3),
        },
    )
    # a successful switch to or from the fallback is the degraded/<engine> condition's own
    # transition (ServingFallback, then Recovered): announcing it too would be two Events
    switch = rec.kind in (DEGRADE, RESTORE) and rec.outcome == "ok"
    if announce is not None and not switch:
        announce(
            Transition(
                condition=f"actions/{rec.engine}/{rec.kind}",
                healthy=False,
                previous=True,
                reason=reason,
                message=message[:1000],
                at=rec.verified_at,
                labels={"engine": rec.engine, "model": rec.model, "target": rec.target or ""},
                severity=Severity.CRITICAL,
            )
        )


def _labels(
    spec: EngineActions, rb: RollbackMachine, last: ActionRecord | None, dry_run_config: bool
) -> dict[str, str]:
    labels = {
        "engine": spec.engine,
        "model": spec.model,
        "version": rb.current or "",
        "last_good": rb.good or "",
        "pinned": rb.pinned or "",
        "dry_run": "true" if dry_run_config else "false",
    }
    if last is not None:
        labels.update(
            last_action=last.kind,
            last_outcome=last.outcome,
            last_calls=last.calls[:300],
            last_server=last.server[:300],
            last_evidence=last.evidence[:300],
        )
    return labels


def engine_conditions(
    spec: EngineActions,
    rb: RollbackMachine,
    dg: DegradeMachine,
    last: ActionRecord | None,
    *,
    now: float,
    dry_run: bool,
    dry_run_config: bool,
) -> list[CheckResult]:
    """``degraded/<engine>`` (CRITICAL, gates ``primary`` only) and
    ``actions/<engine>/rollback`` (WARNING) for one engine."""
    labels = _labels(spec, rb, last, dry_run_config)
    name = spec.engine
    d_reason, d_msg = dg.status(now) if spec.degrade else ("", "degrade off")
    rb_reason, rb_msg = rb.status() if spec.rollback else ("", "rollback off")
    if dg.active and last is not None and last.kind == DEGRADE:
        d_msg = f"{d_msg}; calls: {last.calls}; server: {last.server}"
    if dry_run and last is not None:
        note = f"dry run: {last.calls}"
        d_msg, rb_msg = f"{d_msg}; {note}", f"{rb_msg}; {note}"
    cond = f"degraded/{name}"
    degraded = (
        CheckResult.failed(cond, d_reason, d_msg, labels=labels, gates=GATES)
        if dg.active
        else CheckResult.passed(cond, reason=d_reason, message=d_msg, labels=labels, gates=GATES)
    )
    rollback = CheckResult(
        f"actions/{name}/rollback",
        CheckStatus.FAIL if rb_reason in FAILING_ROLLBACK else CheckStatus.OK,
        Severity.WARNING,
        rb_reason,
        rb_msg,
        labels,
        gates=GATES,
    )
    return [degraded, rollback]
