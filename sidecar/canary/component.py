"""The canary component: config, the ``canary`` check, and the worker keeper.

Wiring (app.py)::

    cfg = parse_canary_config(root.sub("canary"))
    comp = CanaryComponent(cfg, simulate=..., scenario=..., registry=..., gpu_state=...,
                           engines_dir=Path("engines"))
    checks = comp.checks()          # one Check named "canary"
    await comp.start(sink)          # returns at once; the worker starts in the background

Conditions reported (all gate ``readiness`` and ``canary`` unless said otherwise):

- ``canary``: the worker ran the golden input and the output matched. ``Starting`` /
  ``LoadingEngine`` (UNKNOWN) until the first pass; ``WorkerCrashed``, ``CanaryTimeout``,
  ``CudaError``, ``EngineDeserializeFailed``, ``InsufficientGpuMemory`` ... (CRITICAL) while
  the worker is being replaced; ``CanaryMismatch`` (FATAL, sticky); ``CanarySkipped`` (OK)
  while the GPU is busy; ``ExclusiveProcessMode`` (OK, INFO: unmonitored).
- ``canary/latency``: WARNING when over budget (CRITICAL with ``latency_gates_readiness``).
- ``canary/worker-memory``: WARNING ``WorkerMemoryGrowth`` when the worker's RSS grows.
- ``canary/engine/<name>``: the opt-in production engine (also gates ``engine/<name>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from sidecar.canary.config import CanaryConfig
from sidecar.canary.consistency import DigestGauge, DigestKey, output_digest
from sidecar.canary.golden import (
    KERNEL_TOLERANCE,
    Comparison,
    compare_outputs,
    kernel_expected,
    load_expected,
)
from sidecar.canary.metrics import CanaryMetrics
from sidecar.canary.outcome import Death, RunOutcome
from sidecar.canary.protocol import FAULT_MODES, GPU_FAULTS, FaultSpec, LoadRequest, ProductionSpec
from sidecar.canary.sdc_screen import REASON as SDC_REASON
from sidecar.canary.sdc_screen import Judged, SdcScreen
from sidecar.canary.supervisor import CanarySupervisor, SupervisorSettings
from sidecar.core.protocols import Check, GpuStateView, ResultSink
from sidecar.core.values import (
    SERVICE_CANARY,
    SERVICE_READINESS,
    CheckResult,
    CheckStatus,
    Severity,
    engine_service,
)
from sidecar.engine.manifest import EngineManifest, Tolerance, load_manifest
from sidecar.runtime.safeload import short_repr
from sidecar.runtime.scenario import ScenarioFile

log = logging.getLogger(__name__)

KERNEL_INPUT_ID = "cuda-kernel-v1"  # the kernel canary's input is fixed in its source


def _files_digest(paths: Mapping[str, Path]) -> str:
    """sha256 (16 hex digits) over the named files' bytes, in name order (the golden input)."""
    h = hashlib.sha256()
    for name in sorted(paths):
        h.update(name.encode() + b"\0")
        with open(paths[name], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


GATES = frozenset({SERVICE_READINESS, SERVICE_CANARY})
CHECK_NAME = "canary"
COND_LATENCY = "canary/latency"
COND_MEMORY = "canary/worker-memory"
COND_SDC_COVERAGE = "canary/sdc-coverage"
COND_DETERMINISM = "canary/determinism"
COND_SDC_STATE = "canary/sdc-state"

DEFAULT_KERNEL_BUDGET_MS = 100.0
STATE_NOTE = "the state directory; cleared only after a GPU reset and passing rounds"


def fault_from_scenario(doc: Mapping[str, Any]) -> FaultSpec:
    """The scenario's top-level ``canary:`` key; anything malformed means ``ok`` (logged).

    Read on every canary: a value is never converted or logged whole (bounded ``short_repr``).
    """
    raw = doc.get("canary")
    if raw is None:
        return FaultSpec()
    if not isinstance(raw, Mapping):
        log.warning("scenario canary: must be a mapping; ignored", extra={"value": short_repr(raw)})
        return FaultSpec()
    mode = raw.get("mode", "ok")
    gpu_fault = raw.get("gpu_fault", "none")
    delay_raw, leak_raw = raw.get("delay_ms", 0.0), raw.get("leak_mib", 16.0)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in (delay_raw, leak_raw)):
        delay, leak = float(delay_raw), float(leak_raw)
    else:
        log.warning("scenario canary: delay_ms / leak_mib must be numbers; ignored")
        delay, leak = 0.0, 16.0
    if not isinstance(mode, str) or mode not in FAULT_MODES:
        log.warning("scenario canary.mode unknown; using ok", extra={"mode": short_repr(mode)})
        mode = "ok"
    if not isinstance(gpu_fault, str) or gpu_fault not in GPU_FAULTS:
        log.warning(
            "scenario canary.gpu_fault unknown; using none",
            extra={"gpu_fault": short_repr(gpu_fault)},
        )
        gpu_fault = "none"
    return FaultSpec(mode=mode, delay_ms=delay, leak_mib=leak, gpu_fault=gpu_fault)


class MismatchLatch:
    """Silent-data-corruption latch: sticky until the GPU reset generation changes, then
    ``recovery_passes`` consecutive matching canaries. Pure (no clock, no I/O)."""

    def __init__(self, recovery_passes: int) -> None:
        self.recovery_passes = recovery_passes
        self.latched = False
        self.recovering = False
        self.passes = 0
        self.generation: int | None = None
        self.message = ""

    def observe_generation(self, generation: int) -> None:
        if self.latched and self.generation is None:  # restored from disk: a later reset clears
            self.generation = generation
            return
        if self.latched and self.generation is not None and generation != self.generation:
            self.latched = False
            self.recovering = True
            self.passes = 0

    def mismatch(self, generation: int, message: str) -> None:
        self.latched = True
        self.recovering = False
        self.passes = 0
        self.generation = generation
        self.message = message

    def failed(self) -> None:
        """A round that could not be judged while recovering: the passes must be consecutive."""
        self.passes = 0

    def passed(self) -> None:
        if self.recovering:
            self.passes += 1
            if self.passes >= self.recovery_passes:
                self.recovering = False
                self.message = ""

    @property
    def holds(self) -> bool:
        """True while results must stay failed (latched or still recovering)."""
        return self.latched or self.recovering

    def holds_more_than(self, other: MismatchLatch) -> bool:
        """Latched beats recovering beats clear; of two recovering, the one with fewer passes."""
        if self.latched or other.latched:
            return self.latched and not other.latched
        if self.recovering != other.recovering:
            return self.recovering
        return self.recovering and self.passes < other.passes

    def take(self, other: MismatchLatch) -> None:
        """Take another latch's finding (a reload's replacement takes the old component's;
        ``recovery_passes`` stays this one's, from the new config)."""
        self.latched, self.recovering, self.passes = other.latched, other.recovering, other.passes
        self.generation, self.message = other.generation, other.message


@dataclass(frozen=True, slots=True)
class _Golden:
    expected: dict[str, np.ndarray]
    tolerance: Tolerance
    budget_ms: float | None
    # the replica-consistency key's parts that come from the canary's own files
    engine_sha256: str = ""
    tensorrt_version: str = ""
    input_sha256: str = ""


class CanaryCheck:
    """The polled ``canary`` check; the work is done by :class:`CanaryComponent`."""

    name = CHECK_NAME

    def __init__(self, component: CanaryComponent, interval_s: float, timeout_s: float) -> None:
        self.component = component
        self.interval_s = interval_s
        self.timeout_s = timeout_s

    async def run(self) -> Sequence[CheckResult]:
        return await self.component.run_canary()

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [
            CheckResult.failed(
                CHECK_NAME,
                "CanaryTimeout",
                f"canary check still running after {elapsed_s:.1f}s",
                gates=GATES,
            )
        ]


class CanaryComponent:
    """Runs the canary worker and judges its answers. See the module docstring."""

    name = "canary"

    def __init__(
        self,
        config: CanaryConfig,
        *,
        simulate: bool,
        scenario: ScenarioFile | None,
        registry: CollectorRegistry,
        gpu_state: GpuStateView | None,
        engines_dir: Path,
        python: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        state_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.simulate = simulate
        self.scenario = scenario
        self.gpu_state = gpu_state
        self.engines_dir = engines_dir
        self.clock = clock
        self.metrics = CanaryMetrics(registry)
        self.mps = config.mps or bool(os.environ.get("CUDA_MPS_PIPE_DIRECTORY"))
        interval = config.interval_s
        if self.mps:
            interval = max(interval, config.mps_min_interval_s)
        self.interval_s = interval
        self.manifest_path = config.manifest or engines_dir / "canary" / "manifest.yaml"
        self.trt_manifest_path = (
            config.tensorrt_manifest or engines_dir / "canary" / "canary-plan.manifest.yaml"
        )
        prod = config.production_engine
        self.load_request = LoadRequest(
            runner=config.runner,
            manifest=str(self.manifest_path.resolve()),
            tensorrt_manifest=str(self.trt_manifest_path.resolve()),
            production=ProductionSpec(
                str(prod.manifest.resolve()), prod.memory_budget_mib, prod.release_after_verify
            )
            if prod
            else None,
            allow_engine_host_code=config.allow_engine_host_code,
            devices=config.devices,
            warmup_runs=config.warmup_runs,
            tc_blocks_per_sm=config.tensor_core.blocks_per_sm,
            tc_allow_injection=config.tensor_core.allow_fault_injection,
            tc_simulated_sms=config.tensor_core.simulated_sms,
            determinism_check=config.determinism_check,
        )
        settings = SupervisorSettings(
            timeout_s=config.timeout_s,
            first_timeout_s=config.first_timeout_s,
            load_timeout_s=config.load_timeout_s,
            backoff_initial_s=config.backoff_initial_s,
            backoff_max_s=config.backoff_max_s,
            allow_faults=simulate,
        )
        if python:
            settings = dataclasses.replace(settings, python=python)
        self.supervisor = CanarySupervisor(self.load_request, settings, self.metrics, clock=clock)
        self.latch = MismatchLatch(config.recovery_passes)
        self.latch_reason = "CanaryMismatch"
        self.sdc = SdcScreen(registry, interval_s=self.interval_s, state_dir=state_dir)
        restored = self.sdc.persisted()
        if restored is not None:  # a silent-data-corruption finding survives restarts
            text, rebooted = restored
            self.latch.mismatch(0, f"{text} (persisted in {STATE_NOTE})")
            self.latch.generation = None
            self.latch_reason = SDC_REASON
            if rebooted:  # a reboot resets the GPU: evidence, but passing rounds are still due
                self.latch.latched = False
                self.latch.recovering = True
        self.production_latch = MismatchLatch(config.recovery_passes)
        self.production_failed: CheckResult | None = None  # the last result while it holds
        self.production_released = False
        self.last_pass_at: float | None = None
        self.passes = 0
        self._check = CanaryCheck(self, self.interval_s, config.first_timeout_s + config.timeout_s + 5.0)
        self._sink: ResultSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._goldens: dict[str, _Golden] = {}
        self.digests = DigestGauge(registry)
        if simulate and scenario is not None:
            scenario.subscribe(self._on_scenario)

    # --- Component protocol -----------------------------------------------------------------

    def checks(self) -> Sequence[Check]:
        return [self._check] if self.config.enabled else []

    async def start(self, sink: ResultSink) -> None:
        """Returns at once; the worker starts in the background."""
        self._sink = sink
        if self.config.enabled and self._task is None:
            self._task = asyncio.create_task(self._keep(), name="canary-keeper")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.supervisor.stop()

    async def take_over_latches(self, old: CanaryComponent) -> None:
        """A reload's swap: the findings of the component this one replaces move here (a
        config change is no evidence). Its mismatch and production latches (with their
        reason, reset generation and recovery progress) are taken where they hold more than
        this one's own; an SDC finding beats a plain mismatch (only tensor-core rounds clear
        it). SDC latches it persisted after this one read the state file are added here and
        the file is rewritten whole (the old one may have rewritten it without this one's)."""
        now: list[CheckResult] = []  # what this component reports from now on
        old_sdc = old.latch_reason == SDC_REASON and old.latch.holds
        mine_sdc = self.latch_reason == SDC_REASON and self.latch.holds
        if (old_sdc and not mine_sdc) or (old_sdc == mine_sdc and old.latch.holds_more_than(self.latch)):
            self.latch.take(old.latch)
            self.latch_reason = old.latch_reason
            now.append(self._mismatch_result(self.latch.message))
            log.warning(
                "canary latch handed over across the reload",
                extra={"reason": self.latch_reason, "recovering": self.latch.recovering},
            )
        if old.production_latch.holds_more_than(self.production_latch):
            self.production_latch.take(old.production_latch)
            if old.production_failed is not None:
                now.append(old.production_failed)
            log.warning("canary production-engine latch handed over across the reload")
        if now and self._sink is not None:  # replaces a pass this one held before it knew
            self._sink.submit(now)
        await self.sdc.take_over(old.sdc)

    # --- background keeper ------------------------------------------------------------------

    def _uses_gpu(self) -> bool:
        return self.config.runner != "onnxruntime"

    def _exclusive(self) -> bool:
        return bool(self.gpu_state is not None and self._uses_gpu() and self.gpu_state.exclusive_process())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _idle_until_exit_or_wake(self, sup: CanarySupervisor) -> None:
        """Sleep up to a second, waking at once when the worker process exits."""
        proc = sup.proc
        if proc is None:
            await self._sleep(1.0)
            return
        exited = asyncio.ensure_future(proc.wait())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({exited, woken}, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in (exited, woken):
                fut.cancel()
            self._wake.clear()

    async def _keep(self) -> None:
        """Keep one loaded worker, restarting with backoff; none under EXCLUSIVE_PROCESS."""
        sup = self.supervisor
        while not self._stopping:
            if self._exclusive():
                if sup.proc is not None:
                    await sup.stop()
                await self._sleep(1.0)
                continue
            if sup.ready:
                await self._idle_until_exit_or_wake(sup)
                death = await sup.notice_exit()
                if death is not None and self._sink is not None:
                    self._sink.submit([self._not_ready_result()])
                continue
            wait = sup.backoff_remaining()
            if wait > 0:
                await self._sleep(wait)
                continue
            err = await sup.start()
            if self._sink is not None:
                if err is None:
                    self._sink.trigger(CHECK_NAME)  # the first canary as soon as possible
                else:
                    self._sink.submit([self._not_ready_result()])

    def _on_scenario(self, doc: Mapping[str, Any]) -> None:
        if self._sink is not None:
            self._sink.trigger(CHECK_NAME)

    def _fault(self) -> FaultSpec | None:
        # The scenario's canary: key is read only in simulation.
        if not self.simulate or self.scenario is None:
            return None
        return fault_from_scenario(self.scenario.current())

    # --- one canary --------------------------------------------------------------------------

    def _result(
        self,
        status: CheckStatus,
        reason: str,
        message: str,
        *,
        severity: Severity = Severity.CRITICAL,
        labels: Mapping[str, str] | None = None,
        value: float | None = None,
    ) -> CheckResult:
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

    def _not_ready_result(self) -> CheckResult:
        sup = self.supervisor
        death = sup.last_death
        if death is not None:
            wait = sup.backoff_remaining()
            when = f"; restarting in {wait:.1f}s" if wait > 0 else "; restarting"
            return self._result(
                CheckStatus.FAIL,
                death.reason,
                death.message + when,
                labels={"cause": death.cause, **death.labels},
            )
        if sup.loading:
            return self._result(
                CheckStatus.UNKNOWN, "LoadingEngine", f"canary worker loading runner {self.config.runner}"
            )
        return self._result(CheckStatus.UNKNOWN, "Starting", "canary worker starting")

    def _golden(self, runner: str) -> _Golden:
        cached = self._goldens.get(runner)
        if cached is not None:
            return cached
        if runner == "cuda-kernel":
            golden = _Golden(
                {"y": kernel_expected()},
                KERNEL_TOLERANCE,
                DEFAULT_KERNEL_BUDGET_MS,
                input_sha256=KERNEL_INPUT_ID,
            )
        else:
            path = self.trt_manifest_path if runner == "tensorrt" else self.manifest_path
            m = load_manifest(path)
            golden = _Golden(
                load_expected(m),
                m.tolerance,
                m.latency_budget_ms,
                engine_sha256=m.sha256 or "",
                tensorrt_version=m.tensorrt_version or "",
                input_sha256=_files_digest(m.golden_input_paths()),
            )
        self._goldens[runner] = golden
        return golden

    async def run_canary(self) -> list[CheckResult]:
        """One tick of the ``canary`` check."""
        sup = self.supervisor
        if self._exclusive():
            self.metrics.results.labels(outcome="unmonitored").inc()
            return [
                self._result(
                    CheckStatus.OK,
                    "ExclusiveProcessMode",
                    "GPU compute mode EXCLUSIVE_PROCESS: the canary creates no CUDA context "
                    "(it would block the server); readiness rests on NVML and the workload probe",
                    severity=Severity.INFO,
                )
            ]
        generation = self.gpu_state.reset_generation() if self.gpu_state is not None else 0
        self.latch.observe_generation(generation)
        self.production_latch.observe_generation(generation)
        if self.latch.latched:
            return [self._mismatch_result(self.latch.message)]
        if not sup.ready:
            self.metrics.results.labels(outcome="not_ready").inc()
            return [self._not_ready_result()]
        now = self.clock()
        if (
            self.gpu_state is not None
            and self.gpu_state.busy()
            and self.last_pass_at is not None
            and not self.latch.holds
            and now - self.last_pass_at < self.config.max_skip_s
        ):
            self.metrics.results.labels(outcome="skipped").inc()
            return [
                self._result(
                    CheckStatus.OK,
                    "CanarySkipped",
                    f"GPU busy: canary skipped; last pass {now - self.last_pass_at:.1f}s ago "
                    f"(held for up to {self.config.max_skip_s:g}s)",
                    labels={"runner": sup.runner},
                )
            ]
        outcome = await sup.run(self._fault())
        if not outcome.ok:
            self._wake.set()  # let the keeper restart a dead worker without waiting
            failure = self._failure_result(outcome)
            if self.latch.holds:  # no passing round: recovery starts over, the finding stays
                self.latch.failed()
                return [self._mismatch_result(f"{self.latch.message}; last round failed: {failure.reason}")]
            return [failure]
        if outcome.runner == "tensor-core":
            return await self._judge_sdc(outcome, generation)
        if self.latch_reason == SDC_REASON and self.latch.holds:
            # another runner's passing rounds are no evidence about the tensor cores
            note = f"; only runner tensor-core rounds can clear it (runner is {outcome.runner})"
            return [self._mismatch_result(self.latch.message + note)]
        return await self._judge(outcome, generation)

    def _failure_result(self, outcome: RunOutcome) -> CheckResult:
        death: Death | None = outcome.death
        if death is not None:
            kind = {"CanaryTimeout": "timeout", "WorkerCrashed": "crashed"}.get(death.reason, "error")
            self.metrics.results.labels(outcome=kind).inc()
            labels = {"cause": death.cause, "runner": outcome.runner, **death.labels}
            if outcome.error is not None and outcome.error.cuda_error:
                labels["cuda_error"] = outcome.error.cuda_error
            return self._result(CheckStatus.FAIL, death.reason, death.message, labels=labels)
        err = outcome.error
        self.metrics.results.labels(outcome="error").inc()
        assert err is not None
        labels = {"runner": outcome.runner, **err.labels}
        if err.cuda_error:
            labels["cuda_error"] = err.cuda_error
        return self._result(CheckStatus.FAIL, err.reason, err.message, labels=labels)

    def _mismatch_result(self, message: str) -> CheckResult:
        if self.latch.recovering:
            message = (
                f"{message}; GPU reset seen, recovering: {self.latch.passes}/"
                f"{self.latch.recovery_passes} matching canaries"
            )
        elif self.latch_reason == SDC_REASON:
            kept = "; persisted across restarts" if self.sdc.store is not None else ""
            message = (
                f"{message} (silent data corruption: sticky until a GPU reset is observed and "
                f"{self.latch.recovery_passes} rounds pass{kept})"
            )
        else:
            message = (
                f"{message} (possible silent data corruption; sticky until a GPU reset "
                "is observed or the sidecar restarts)"
            )
        return self._result(
            CheckStatus.FAIL,
            self.latch_reason,
            message,
            severity=Severity.FATAL,
            labels={"runner": self.supervisor.runner},
        )

    async def _judge(self, outcome: RunOutcome, generation: int) -> list[CheckResult]:
        sup = self.supervisor
        runner = outcome.runner
        try:  # the golden file is read and parsed once, on a thread (never on the loop)
            cached = self._goldens.get(runner)
            golden = cached if cached is not None else await asyncio.to_thread(self._golden, runner)
        except (OSError, ValueError) as exc:
            self.metrics.results.labels(outcome="error").inc()
            return [self._result(CheckStatus.FAIL, "GoldenFileUnreadable", str(exc))]
        cmp = compare_outputs(outcome.outputs, golden.expected, golden.tolerance)
        if np.isfinite(cmp.max_abs_error):
            self.metrics.max_abs_error.set(cmp.max_abs_error)
        results: list[CheckResult] = []
        if not cmp.matches:
            self.metrics.results.labels(outcome="mismatch").inc()
            msg = f"{runner}: output differs from golden: {cmp.detail}"
            self.latch.mismatch(generation, msg)
            self.digests.clear()  # no digest of a wrong answer stands for this pod
            log.error(
                "canary mismatch",
                extra={"runner": runner, "detail": cmp.detail, "max_abs_error": cmp.max_abs_error},
            )
            results.append(self._mismatch_result(msg))
        else:
            self.metrics.results.labels(outcome="pass").inc()
            self.latch.passed()
            if self.latch.holds:
                results.append(self._mismatch_result(self.latch.message))
            else:
                self.last_pass_at = self.clock()
                self.passes += 1
                key, digest = self._publish_digest(runner, golden, outcome.outputs)
                results.append(
                    self._result(
                        CheckStatus.OK,
                        "CanaryPassed",
                        f"{sup.detail}: output matches golden (max abs error "
                        f"{cmp.max_abs_error:.3g}), {outcome.latency_s * 1e3:.3f} ms",
                        severity=Severity.CRITICAL,
                        labels={**key.labels(), "digest": digest},
                        value=outcome.latency_s,
                    )
                )
            results.append(self._latency_result(outcome, golden))
        det = self._determinism_result(golden)
        if det is not None:
            results.append(det)
        results.append(await self._memory_result(outcome))
        if self.load_request.production is not None:
            results.extend(await self._production_results(outcome, generation))
        return results

    def _publish_digest(
        self, runner: str, golden: _Golden, outputs: Mapping[str, np.ndarray]
    ) -> tuple[DigestKey, str]:
        """The exact output's digest, exported with its consistency key (replica comparison,
        docs/trends.md); both are returned for the result's labels (what a peer reads)."""
        identity_fn = getattr(self.gpu_state, "identity", None)
        identity: Mapping[str, str] = identity_fn() if identity_fn is not None else {}
        key = DigestKey(
            runner=runner,
            engine_sha256=golden.engine_sha256,
            gpu_model=identity.get("gpu_model", ""),
            driver_version=identity.get("driver_version", ""),
            cuda_version=identity.get("cuda_version", ""),
            tensorrt_version=golden.tensorrt_version,
            input_sha256=golden.input_sha256,
        )
        digest = output_digest(outputs)
        self.digests.publish(key, digest)
        return key, digest

    async def _judge_sdc(self, outcome: RunOutcome, generation: int) -> list[CheckResult]:
        """A tensor-core round: golden recomputed here from the reported seed, bit-exact."""
        judged: Judged = await self.sdc.judge(outcome.outputs)
        results: list[CheckResult] = []
        if judged.corrupt:
            self.metrics.results.labels(outcome="mismatch").inc()
            msg = judged.sdc_message()
            self.latch.mismatch(generation, msg)
            self.latch_reason = SDC_REASON
            await self.sdc.latch(judged)
            log.error(
                "tensor-core canary: silent data corruption",
                extra={
                    "gpus": [v.uuid for v in judged.corrupt],
                    "sms": [v.bad_sms[:16] for v in judged.corrupt],
                    "elements": sum(v.mismatch_count for v in judged.corrupt),
                    "detail": msg[:500],
                },
            )
            results.append(self._mismatch_result(msg))
        elif judged.problems:
            # Not evidence of corruption, but no evidence of health either: fail closed.
            self.metrics.results.labels(outcome="error").inc()
            text = "; ".join(judged.problems)[:1000]
            if self.latch.holds:  # a latched finding stays FATAL; recovery passes must be consecutive
                self.latch.failed()
                return [self._mismatch_result(self.latch.message)]
            results.append(
                self._result(
                    CheckStatus.FAIL, "TensorCoreRoundInvalid", text, labels={"runner": outcome.runner}
                )
            )
        else:
            self.metrics.results.labels(outcome="pass").inc()
            held = self.latch.holds
            self.latch.passed()
            if self.latch.holds:
                results.append(self._mismatch_result(self.latch.message))
            else:
                if held:
                    await self.sdc.clear()
                    self.latch_reason = "CanaryMismatch"
                    log.warning("tensor-core canary: SDC latch cleared after a GPU reset and passing rounds")
                self.last_pass_at = self.clock()
                self.passes += 1
                cov = ", ".join(f"{u} {c}/{n} SMs" for u, c, n, _ in judged.coverage())
                results.append(
                    self._result(
                        CheckStatus.OK,
                        "CanaryPassed",
                        f"tensor-core int8+bf16 MMA results bit-exact on {cov}, "
                        f"{outcome.latency_s * 1e3:.3f} ms",
                        labels={"runner": outcome.runner},
                        value=outcome.latency_s,
                    )
                )
            results.append(
                self._latency_result(outcome, _Golden({}, KERNEL_TOLERANCE, DEFAULT_KERNEL_BUDGET_MS))
            )
        results.append(self._coverage_result(judged))
        # Fail closed: an unreadable state file may hold a finding; an unwritable one would let
        # a restart forget the next (the store's health lists the state dir: off the loop).
        problem = await asyncio.to_thread(lambda: self.sdc.problem)
        if problem:
            results.append(CheckResult.failed(COND_SDC_STATE, "StateFileProblem", problem, gates=GATES))
        elif self.sdc.store is not None:
            results.append(CheckResult.passed(COND_SDC_STATE, message=str(self.sdc.store.path), gates=GATES))
        results.append(await self._memory_result(outcome))
        return results

    def _determinism_result(self, golden: _Golden) -> CheckResult | None:
        """The worker's load-time self-test: two runs on one input, compared bit for bit, and
        the engine file's sha256 against the one the golden was recorded for."""
        det = self.supervisor.determinism
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
        tol = golden.tolerance
        within = "within" if det.get("within_tolerance") else "BEYOND"
        text = (
            f"two runs on one input differ bitwise (max abs difference {worst:.3g}); {within} "
            f"the golden tolerance atol {tol.atol:g} rtol {tol.rtol:g}; {key}"
        )
        return CheckResult.failed(
            COND_DETERMINISM,
            "CanaryNondeterministic",
            text,
            severity=Severity.WARNING,
            gates=GATES,
        )

    def _coverage_result(self, judged: Judged) -> CheckResult:
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

    def _latency_result(self, outcome: RunOutcome, golden: _Golden) -> CheckResult:
        budget = self.config.latency_budget_ms or golden.budget_ms
        ms = outcome.latency_s * 1e3
        severity = Severity.CRITICAL if self.config.latency_gates_readiness else Severity.WARNING
        if budget and ms > budget:
            return CheckResult.failed(
                COND_LATENCY,
                "CanaryLatencyOverBudget",
                f"canary took {ms:.2f} ms, budget {budget:g} ms",
                severity=severity,
                labels={"runner": outcome.runner},
                value=outcome.latency_s,
                gates=GATES,
            )
        return CheckResult.passed(
            COND_LATENCY,
            message=f"{ms:.3f} ms (budget {budget or 'none'} ms)",
            labels={"runner": outcome.runner},
            value=outcome.latency_s,
            gates=GATES,
            severity=severity,
        )

    async def _memory_result(self, outcome: RunOutcome) -> CheckResult:
        sup = self.supervisor
        mib = 1 << 20
        rss = outcome.rss_bytes
        base = sup.rss_baseline or rss
        growth = rss - base
        if rss > self.config.worker_max_rss_mib * mib:
            msg = (
                f"worker RSS {rss / mib:.0f} MiB over limit "
                f"{self.config.worker_max_rss_mib:g} MiB (grew {growth / mib:.0f} MiB); replaced"
            )
            await sup.replace("memory_limit", "WorkerMemoryLimit", msg)
            self._wake.set()
            return CheckResult.failed(
                COND_MEMORY,
                "WorkerMemoryLimit",
                msg,
                severity=Severity.WARNING,
                value=float(rss),
                gates=GATES,
            )
        if growth > self.config.rss_growth_warn_mib * mib:
            return CheckResult.failed(
                COND_MEMORY,
                "WorkerMemoryGrowth",
                f"worker RSS grew {growth / mib:.0f} MiB since load (now {rss / mib:.0f} MiB)",
                severity=Severity.WARNING,
                value=float(rss),
                gates=GATES,
            )
        return CheckResult.passed(
            COND_MEMORY,
            message=f"worker RSS {rss / mib:.0f} MiB",
            value=float(rss),
            severity=Severity.WARNING,
            gates=GATES,
        )

    async def _production_results(self, outcome: RunOutcome, generation: int) -> list[CheckResult]:
        prod = self.config.production_engine
        assert prod is not None
        try:
            m: EngineManifest = await asyncio.to_thread(load_manifest, prod.manifest)
        except Exception as exc:
            return [
                CheckResult.failed(
                    f"canary/engine/{prod.manifest.stem}", "ManifestInvalid", str(exc), gates=GATES
                )
            ]
        name = f"canary/engine/{m.name}"
        gates = GATES | {engine_service(m.name)}
        if outcome.production_outputs is None:
            if self.production_released:
                return [
                    CheckResult.passed(
                        name,
                        reason="VerifiedAndReleased",
                        message="production engine verified, then released",
                        gates=gates,
                    )
                ]
            return [CheckResult.unknown(name, "LoadingEngine", "production engine not loaded", gates=gates)]
        cmp: Comparison = compare_outputs(outcome.production_outputs, load_expected(m), m.tolerance)
        if not cmp.matches:
            self.production_latch.mismatch(generation, f"production engine {m.name}: {cmp.detail}")
        else:
            self.production_latch.passed()
        if self.production_latch.holds:
            self.production_failed = CheckResult.failed(
                name,
                "CanaryMismatch",
                self.production_latch.message,
                severity=Severity.FATAL,
                gates=gates,
            )
            return [self.production_failed]
        self.production_failed = None
        if prod.release_after_verify:
            await self.supervisor.release_production()
            self.production_released = True
            self.supervisor.load_request = dataclasses.replace(self.load_request, production=None)
        return [
            CheckResult.passed(
                name, reason="CanaryPassed", message=f"production engine {m.name} matches golden", gates=gates
            )
        ]
