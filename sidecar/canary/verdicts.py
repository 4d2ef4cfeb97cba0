"""The canary's check results, built from plain values. Pure (no clock, no I/O).

:class:`sidecar.canary.judge.CanaryJudge` decides *which* result a round gets; these
functions say what each one looks like (name, reason, severity, gates, message).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.canary.outcome import Death, RunOutcome
from sidecar.canary.sdc_screen import Judged
from sidecar.core.values import SERVICE_CANARY, SERVICE_READINESS, CheckResult, CheckStatus, Severity
from sidecar.engine.manifest import Tolerance

GATES = frozenset({SERVICE_READINESS, SERVICE_CANARY})
CHECK_NAME = "canary"
COND_LATENCY = "canary/latency"
COND_MEMORY = "canary/worker-memory"
COND_SDC_COVERAGE = "canary/sdc-coverage"
COND_DETERMINISM = "canary/determinism"
COND_SDC_STATE = "canary/sdc-state"
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the judge reads of the worker's supervisor (a snapshot, taken by the component)."""

    runner: str = ""  # the runner the worker loaded ("" before the first load)
    detail: str = ""
    loading: bool = False
    last_death: Death | None = None
    backoff_remaining_s: float = 0.0
    determinism: Mapping[str, Any] | None = None  # the worker's load-time self-test
    rss_baseline: int | None = None  # the worker's RSS at its first answered canary


def canary_result(
    status: CheckStatus,
    reason: str,
    message: str,
    *,
    severity: Severity = Severity.CRITICAL,
    labels: Mapping[str, str] | None = None,
    value: float | None = None,
) -> CheckResult:
    """A result of the ``canary`` condition itself."""
    return CheckResult(
        name=CHECK_NAME,
        status=status,
        severity=severity,
        reason=reason,
        message=message,
        labels=dict(labels or {}),
        value=value,
        gates=GATES,
    )


def not_ready_result(worker: WorkerView, configured_runner: str) -> CheckResult:
    """No loaded worker: why (its last death and the backoff), or that it is loading."""
    death = worker.last_death
    if death is not None:
        wait = worker.backoff_remaining_s
        when = f"; restarting in {wait:.1f}s" if wait > 0 else "; restarting"
        return canary_result(
            CheckStatus.FAIL,
            death.reason,
            death.message + when,
            labels={"cause": death.cause, **death.labels},
        )
    if worker.loading:
        return canary_result(
            CheckStatus.UNKNOWN, "LoadingEngine", f"canary worker loading runner {configured_runner}"
        )
    return canary_result(CheckStatus.UNKNOWN, "Starting", "canary worker starting")


def failure_result(outcome: RunOutcome) -> tuple[CheckResult, str]:
    """A round the worker did not answer (death) or answered with an error; and its
    ``trt_health_canary_results_total`` outcome label."""
    death = outcome.death
    if death is not None:
        kind = {"CanaryTimeout": "timeout", "WorkerCrashed": "crashed"}.get(death.reason, "error")
        labels = {"cause": death.cause, "runner": outcome.runner, **death.labels}
        if outcome.error is not None and outcome.error.cuda_error:
            labels["cuda_error"] = outcome.error.cuda_error
        return canary_result(CheckStatus.FAIL, death.reason, death.message, labels=labels), kind
    err = outcome.error
    assert err is not None
    labels = {"runner": outcome.runner, **err.labels}
    if err.cuda_error:
        labels["cuda_error"] = err.cuda_error
    return canary_result(CheckStatus.FAIL, err.reason, err.message, labels=labels), "error"


def latency_result(outcome: RunOutcome, budget_ms: float | None, gates_readiness: bool) -> CheckResult:
    """``canary/latency``: over ``budget_ms`` fails (WARNING, or CRITICAL when it gates)."""
    ms = outcome.latency_s * 1e3
    severity = Severity.CRITICAL if gates_readiness else Severity.WARNING
    if budget_ms and ms > budget_ms:
        return CheckResult.failed(
            COND_LATENCY,
            "CanaryLatencyOverBudget",
            f"canary took {ms:.2f} ms, budget {budget_ms:g} ms",
            severity=severity,
            labels={"runner": outcome.runner},
            value=outcome.latency_s,
            gates=GATES,
        )
    return CheckResult.passed(
        COND_LATENCY,
        message=f"{ms:.3f} ms (budget {budget_ms or 'none'} ms)",
        labels={"runner": outcome.runner},
        value=outcome.latency_s,
        gates=GATES,
        severity=severity,
    )


def determinism_result(det: Mapping[str, Any] | None, tolerance: Tolerance) -> CheckResult | None:
    """The worker's load-time self-test: two runs on one input, compared bit for bit, and
    the engine file's sha256 against the one the golden was recorded for."""
    if det is None:
        return None
    want, got = det.get("manifest_sha256"), det.get("engine_sha256")
    if want and got and want != got:
        return CheckResult.failed(
            COND_DETERMINISM,
            "GoldenEngineMismatch",
            f"engine file sha256 {str(got)[:16]}... is not the {str(want)[:16]}... the golden "
            "outputs were recorded for (TensorRT builds are not bit-identical)",
            gates=GATES,
        )
    key = f"golden keyed to engine sha256 {str(want)[:16]}..." if want else "golden not keyed (no sha256)"
    if det.get("bitwise"):
        return CheckResult.passed(
            COND_DETERMINISM,
            message=f"two runs on one input are bit-identical; {key}",
            severity=Severity.WARNING,
            gates=GATES,
        )
    worst = float(det.get("max_abs_diff") or 0.0)
    within = "within" if det.get("within_tolerance") else "BEYOND"
    text = (
        f"two runs on one input differ bitwise (max abs difference {worst:.3g}); {within} "
        f"the golden tolerance atol {tolerance.atol:g} rtol {tolerance.rtol:g}; {key}"
    )
    return CheckResult.failed(
        COND_DETERMINISM,
        "CanaryNondeterministic",
        text,
        severity=Severity.WARNING,
        gates=GATES,
    )


def coverage_result(judged: Judged) -> CheckResult:
    """``canary/sdc-coverage``: every SM of every GPU ran MMA work this round, or which not."""
    cov = judged.coverage()
    partial = [(u, c, n, miss) for u, c, n, miss in cov if c < n]
    if not cov:
        return CheckResult.unknown(
            COND_SDC_COVERAGE,
            "NoValidRound",
            "no valid tensor-core round",
            severity=Severity.WARNING,
            gates=GATES,
        )
    if partial:
        text = "; ".join(
            f"GPU {u}: {c}/{n} SMs ran MMA work; {n - c} not screened this round"
            + (f": {miss[:16]}" if miss else "")
            for u, c, n, miss in partial
        )
        return CheckResult.failed(
            COND_SDC_COVERAGE, "SdcCoverageIncomplete", text, severity=Severity.WARNING, gates=GATES
        )
    text = "; ".join(f"GPU {u}: {c}/{n} SMs" for u, c, n, _ in cov)
    return CheckResult.passed(COND_SDC_COVERAGE, message=text, severity=Severity.WARNING, gates=GATES)


def sdc_state_result(problem: str | None, state_path: str | None) -> CheckResult | None:
    """``canary/sdc-state``: fail closed on a state file that cannot be read or written (it
    may hold a finding, or a restart would forget the next); ``None`` without a state dir."""
    if problem:
        return CheckResult.failed(COND_SDC_STATE, "StateFileProblem", problem, gates=GATES)
    if state_path is not None:
        return CheckResult.passed(COND_SDC_STATE, message=state_path, gates=GATES)
    return None


def memory_result(
    outcome: RunOutcome, baseline: int | None, max_rss_mib: float, growth_warn_mib: float
) -> tuple[CheckResult, str | None]:
    """``canary/worker-memory`` and, when the worker is over its RSS limit, the message it is
    replaced with (``None``: keep it)."""
    rss = outcome.rss_bytes
    base = baseline or rss
    growth = rss - base
    if rss > max_rss_mib * MIB:
        msg = (
            f"worker RSS {rss / MIB:.0f} MiB over limit "
            f"{max_rss_mib:g} MiB (grew {growth / MIB:.0f} MiB); replaced"
        )
        failed = CheckResult.failed(
            COND_MEMORY,
            "WorkerMemoryLimit",
            msg,
            severity=Severity.WARNING,
            value=float(rss),
            gates=GATES,
        )
        return failed, msg
    if growth > growth_warn_mib * MIB:
        grown = CheckResult.failed(
            COND_MEMORY,
            "WorkerMemoryGrowth",
            f"worker RSS grew {growth / MIB:.0f} MiB since load (now {rss / MIB:.0f} MiB)",
            severity=Severity.WARNING,
            value=float(rss),
            gates=GATES,
        )
        return grown, None
    ok = CheckResult.passed(
        COND_MEMORY,
        message=f"worker RSS {rss / MIB:.0f} MiB",
        value=float(rss),
        severity=Severity.WARNING,
        gates=GATES,
    )
    return ok, None
