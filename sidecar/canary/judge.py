"""The canary's judge: worker outcomes, goldens and time in, check results out. Pure.

It holds what one canary remembers between rounds (the mismatch latch and its reason, the
production engines' verdicts (:mod:`sidecar.canary.production`), the last pass) and decides
every verdict: skipped, not ready, timed out or crashed, matching or not, silent data
corruption, latency, worker memory, each production engine. It does no I/O and reads no clock
(``now`` is passed in); what the verdict asks the world to do (count a metric, publish or
clear the output digest, persist or clear an SDC latch, replace the worker, release or load
again a production engine) comes back in the
:class:`Judgement` for :class:`sidecar.canary.component.CanaryComponent` to carry out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from sidecar.canary import verdicts as v
from sidecar.canary.config import CanaryConfig
from sidecar.canary.consistency import DigestKey, output_digest
from sidecar.canary.golden import compare_outputs
from sidecar.canary.golden_store import KERNEL_GOLDEN_BUDGET, Golden, ProductionGolden
from sidecar.canary.latch import MismatchLatch
from sidecar.canary.outcome import RunOutcome
from sidecar.canary.production import MISMATCH_REASON, EngineCanary, Fingerprint
from sidecar.canary.sdc_screen import REASON as SDC_REASON
from sidecar.canary.sdc_screen import Judged
from sidecar.core.values import CheckResult, CheckStatus, Severity

log = logging.getLogger("sidecar.canary.component")  # the name these lines always had

STATE_NOTE = "the state directory; cleared only after a GPU reset and passing rounds"


@dataclass(slots=True)
class Judgement:
    """A round's results and what they ask the component to do."""

    results: list[CheckResult] = field(default_factory=list)
    outcome: str | None = None  # the trt_health_canary_results_total label to count
    max_abs_error: float | None = None  # the gauge's new value (finite errors only)
    digest: tuple[DigestKey, str] | None = None  # publish: the exact output's digest
    clear_digests: bool = False  # a wrong answer: no digest stands for this pod
    persist_sdc: Judged | None = None  # write the SDC latches of these corrupt GPUs
    clear_sdc: bool = False  # the SDC finding cleared: drop the persisted latches
    replace_worker: str | None = None  # over its memory limit: replace it, with this message
    release_production: bool = False  # verified: drop the production engine in the worker
    reload_production: bool = False  # its files changed since verified: load it again
    final: bool = False  # nothing more to add to this round (no state / memory results)


class CanaryJudge:
    """Every verdict of one canary component. See the module docstring."""

    def __init__(self, config: CanaryConfig, *, sdc_persisted: bool = False) -> None:
        self.config = config
        self.sdc_persisted = sdc_persisted  # SDC findings survive restarts (a state dir)
        self.latch = MismatchLatch(config.recovery_passes)
        self.latch_reason = MISMATCH_REASON
        # one per production engine (canary.production_engines), in config order
        self.engines = [EngineCanary(e, config.recovery_passes, config.backoff_max_s) for e in config.engines]
        self.last_pass_at: float | None = None
        self.passes = 0

    # --- state carried across restarts and reloads -----------------------------------------

    def restore_sdc(self, text: str, rebooted: bool) -> None:
        """An SDC finding persisted by an earlier run: it holds until a reset seen by this
        one (a reboot is one) and then passing tensor-core rounds."""
        self.latch.mismatch(0, f"{text} (persisted in {STATE_NOTE})")
        self.latch.generation = None
        self.latch_reason = SDC_REASON
        if rebooted:  # a reboot resets the GPU: evidence, but passing rounds are still due
            self.latch.latched = False
            self.latch.recovering = True

    def take_over(self, old: CanaryJudge, runner: str) -> list[CheckResult]:
        """A reload's swap: the old judge's findings move here where they hold more than
        this one's own (a config change is no evidence); an SDC finding beats a plain
        mismatch (only tensor-core rounds clear it). Returns what this one reports now."""
        now: list[CheckResult] = []
        old_sdc = old.latch_reason == SDC_REASON and old.latch.holds
        mine_sdc = self.latch_reason == SDC_REASON and self.latch.holds
        if (old_sdc and not mine_sdc) or (old_sdc == mine_sdc and old.latch.holds_more_than(self.latch)):
            self.latch.take(old.latch)
            self.latch_reason = old.latch_reason
            now.append(self.mismatch_result(self.latch.message, runner))
            log.warning(
                "canary latch handed over across the reload",
                extra={"reason": self.latch_reason, "recovering": self.latch.recovering},
            )
        olds = {e.config.manifest: e for e in old.engines}
        for engine in self.engines:
            was = olds.get(engine.config.manifest)
            if was is None or not was.latch.holds_more_than(engine.latch):
                continue
            engine.latch.take(was.latch)
            if was.failed is not None:
                now.append(was.failed)
            log.warning(
                "canary production-engine latch handed over across the reload",
                extra={"engine": str(engine.config.manifest)},
            )
        return now

    # --- before the worker runs ------------------------------------------------------------

    def exclusive(self) -> Judgement:
        """EXCLUSIVE_PROCESS compute mode: no canary (its CUDA context would block the server)."""
        result = v.canary_result(
            CheckStatus.OK,
            "ExclusiveProcessMode",
            "GPU compute mode EXCLUSIVE_PROCESS: the canary creates no CUDA context "
            "(it would block the server); readiness rests on NVML and the workload probe",
            severity=Severity.INFO,
        )
        return Judgement([result], outcome="unmonitored", final=True)

    def before_run(self, generation: int, *, ready: bool, worker: v.WorkerView) -> Judgement | None:
        """A latched finding, or no loaded worker: the round ends here. ``None``: go on."""
        self.latch.observe_generation(generation)
        for engine in self.engines:
            engine.latch.observe_generation(generation)
        if self.latch.latched:
            return Judgement([self.mismatch_result(self.latch.message, worker.runner)], final=True)
        if not ready:
            result = v.not_ready_result(worker, self.config.runner)
            return Judgement([result], outcome="not_ready", final=True)
        return None

    def skip(self, *, now: float, busy: bool, runner: str) -> Judgement | None:
        """A busy GPU skips the canary for up to ``max_skip_s`` after a pass (none while a
        finding holds). ``None``: run it."""
        last = self.last_pass_at
        if not busy or last is None or self.latch.holds or now - last >= self.config.max_skip_s:
            return None
        result = v.canary_result(
            CheckStatus.OK,
            "CanarySkipped",
            f"GPU busy: canary skipped; last pass {now - last:.1f}s ago "
            f"(held for up to {self.config.max_skip_s:g}s)",
            labels={"runner": runner},
        )
        return Judgement([result], outcome="skipped", final=True)

    def not_ready(self, worker: v.WorkerView) -> CheckResult:
        """What the keeper reports while it replaces a worker."""
        return v.not_ready_result(worker, self.config.runner)

    # --- after it ran ------------------------------------------------------------------------

    def run_failed(self, outcome: RunOutcome, runner: str) -> Judgement:
        """No answer (timeout, crash) or an error; a finding stays and its recovery restarts."""
        failure, kind = v.failure_result(outcome)
        if self.latch.holds:  # no passing round: recovery starts over, the finding stays
            self.latch.failed()
            message = f"{self.latch.message}; last round failed: {failure.reason}"
            return Judgement([self.mismatch_result(message, runner)], outcome=kind, final=True)
        return Judgement([failure], outcome=kind, final=True)

    def sdc_holds(self, outcome: RunOutcome, runner: str) -> Judgement | None:
        """An SDC finding is cleared only by tensor-core rounds, not by another runner's."""
        if self.latch_reason == SDC_REASON and self.latch.holds:
            note = f"; only runner tensor-core rounds can clear it (runner is {outcome.runner})"
            return Judgement([self.mismatch_result(self.latch.message + note, runner)], final=True)
        return None

    def golden_unreadable(self, exc: Exception) -> Judgement:
        result = v.canary_result(CheckStatus.FAIL, "GoldenFileUnreadable", str(exc))
        return Judgement([result], outcome="error", final=True)

    def golden_round(
        self,
        outcome: RunOutcome,
        golden: Golden,
        generation: int,
        *,
        now: float,
        worker: v.WorkerView,
        identity: Mapping[str, str],
    ) -> Judgement:
        """A golden-compared round (ONNX Runtime, TensorRT, CUDA kernel): the ``canary``
        result, latency and the load-time determinism self-test."""
        runner = outcome.runner
        cmp = compare_outputs(outcome.outputs, golden.expected, golden.tolerance)
        j = Judgement(max_abs_error=cmp.max_abs_error if np.isfinite(cmp.max_abs_error) else None)
        if not cmp.matches:
            j.outcome = "mismatch"
            msg = f"{runner}: output differs from golden: {cmp.detail}"
            self.latch.mismatch(generation, msg)
            j.clear_digests = True
            log.error(
                "canary mismatch",
                extra={"runner": runner, "detail": cmp.detail, "max_abs_error": cmp.max_abs_error},
            )
            j.results.append(self.mismatch_result(msg, worker.runner))
        else:
            j.outcome = "pass"
            self.latch.passed()
            if self.latch.holds:
                j.results.append(self.mismatch_result(self.latch.message, worker.runner))
            else:
                self.last_pass_at = now
                self.passes += 1
                key = DigestKey(
                    runner=runner,
                    engine_sha256=golden.engine_sha256,
                    gpu_model=identity.get("gpu_model", ""),
                    driver_version=identity.get("driver_version", ""),
                    cuda_version=identity.get("cuda_version", ""),
                    tensorrt_version=golden.tensorrt_version,
                    input_sha256=golden.input_sha256,
                )
                digest = output_digest(outcome.outputs)
                j.digest = (key, digest)
                j.results.append(
                    v.canary_result(
                        CheckStatus.OK,
                        "CanaryPassed",
                        f"{worker.detail}: output matches golden (max abs error "
                        f"{cmp.max_abs_error:.3g}), {outcome.latency_s * 1e3:.3f} ms",
                        severity=Severity.CRITICAL,
                        labels={**key.labels(), "digest": digest},
                        value=outcome.latency_s,
                    )
                )
            j.results.append(self._latency(outcome, golden))
        det = v.determinism_result(worker.determinism, golden.tolerance)
        if det is not None:
            j.results.append(det)
        return j

    def sdc_round(
        self, outcome: RunOutcome, judged: Judged, generation: int, *, now: float, worker: v.WorkerView
    ) -> Judgement:
        """A tensor-core round, judged bit for bit by the SDC screen: the ``canary`` result,
        latency and coverage (``final`` when a held finding swallows an invalid round)."""
        runner = worker.runner
        j = Judgement()
        if judged.corrupt:
            j.outcome = "mismatch"
            msg = judged.sdc_message()
            self.latch.mismatch(generation, msg)
            self.latch_reason = SDC_REASON
            j.persist_sdc = judged
            log.error(
                "tensor-core canary: silent data corruption",
                extra={
                    "gpus": [d.uuid for d in judged.corrupt],
                    "sms": [d.bad_sms[:16] for d in judged.corrupt],
                    "elements": sum(d.mismatch_count for d in judged.corrupt),
                    "detail": msg[:500],
                },
            )
            j.results.append(self.mismatch_result(msg, runner))
        elif judged.problems:
            # Not evidence of corruption, but no evidence of health either: fail closed.
            j.outcome = "error"
            text = "; ".join(judged.problems)[:1000]
            if self.latch.holds:  # a latched finding stays FATAL; recovery passes must be consecutive
                self.latch.failed()
                j.results.append(self.mismatch_result(self.latch.message, runner))
                j.final = True
                return j
            j.results.append(
                v.canary_result(
                    CheckStatus.FAIL, "TensorCoreRoundInvalid", text, labels={"runner": outcome.runner}
                )
            )
        else:
            j.outcome = "pass"
            held = self.latch.holds
            self.latch.passed()
            if self.latch.holds:
                j.results.append(self.mismatch_result(self.latch.message, runner))
            else:
                if held:
                    j.clear_sdc = True
                    self.latch_reason = MISMATCH_REASON
                    log.warning("tensor-core canary: SDC latch cleared after a GPU reset and passing rounds")
                self.last_pass_at = now
                self.passes += 1
                cov = ", ".join(f"{u} {c}/{n} SMs" for u, c, n, _ in judged.coverage())
                j.results.append(
                    v.canary_result(
                        CheckStatus.OK,
                        "CanaryPassed",
                        f"tensor-core int8+bf16 MMA results bit-exact on {cov}, "
                        f"{outcome.latency_s * 1e3:.3f} ms",
                        labels={"runner": outcome.runner},
                        value=outcome.latency_s,
                    )
                )
            j.results.append(self._latency(outcome, KERNEL_GOLDEN_BUDGET))
        j.results.append(v.coverage_result(judged))
        return j

    def memory(self, outcome: RunOutcome, worker: v.WorkerView) -> Judgement:
        """``canary/worker-memory``; over the RSS limit the worker is replaced."""
        result, replace = v.memory_result(
            outcome, worker.rss_baseline, self.config.worker_max_rss_mib, self.config.rss_growth_warn_mib
        )
        return Judgement([result], replace_worker=replace)

    # --- the opt-in production engines (sidecar.canary.production) ------------------------

    @property
    def production_failed(self) -> CheckResult | None:
        """The first production engine's held failure (the one-engine form)."""
        return self.engines[0].failed if self.engines else None

    def production_unreadable(self, exc: Exception, index: int = 0) -> Judgement:
        return Judgement(self.engines[index].unreadable(exc).results)

    def production_round(
        self,
        outcome: RunOutcome,
        found: ProductionGolden,
        generation: int,
        *,
        index: int = 0,
        outputs: dict[str, np.ndarray] | None = None,
        fingerprint: Fingerprint = None,
        now: float = 0.0,
    ) -> Judgement:
        """Production engine ``index``'s outputs (``outputs``, else the one-engine form's
        ``outcome.production_outputs``) against its manifest's goldens: its own latch; with
        ``release_after_verify``, released once verified and verified again when its files
        (``fingerprint``) change; a failed load again is tried again after a while (``now``)."""
        got = outputs if outputs is not None or index > 0 else outcome.production_outputs
        verdict = self.engines[index].round(got, found, generation, fingerprint, now)
        return Judgement(
            verdict.results, release_production=verdict.release, reload_production=verdict.reload
        )

    # --- shared ------------------------------------------------------------------------------

    def mismatch_result(self, message: str, runner: str) -> CheckResult:
        """The FATAL result of a held finding, saying what clears it."""
        if self.latch.recovering:
            message = (
                f"{message}; GPU reset seen, recovering: {self.latch.passes}/"
                f"{self.latch.recovery_passes} matching canaries"
            )
        elif self.latch_reason == SDC_REASON:
            kept = "; persisted across restarts" if self.sdc_persisted else ""
            message = (
                f"{message} (silent data corruption: sticky until a GPU reset is observed and "
                f"{self.latch.recovery_passes} rounds pass{kept})"
            )
        else:
            message = (
                f"{message} (possible silent data corruption; sticky until a GPU reset "
                "is observed or the sidecar restarts)"
            )
        return v.canary_result(
            CheckStatus.FAIL,
            self.latch_reason,
            message,
            severity=Severity.FATAL,
            labels={"runner": runner},
        )

    def _latency(self, outcome: RunOutcome, golden: Golden) -> CheckResult:
        budget = self.config.latency_budget_ms or golden.budget_ms
        return v.latency_result(outcome, budget, self.config.latency_gates_readiness)
