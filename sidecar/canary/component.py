"""The canary component: the ``canary`` check, the worker keeper, and the wiring between the
worker's supervisor, the judge and the goldens.

Wiring (app.py)::

    cfg = parse_canary_config(root.sub("canary"))          # sidecar.canary.config
    comp = CanaryComponent(cfg, simulate=..., scenario=..., registry=..., gpu_state=...,
                           engines_dir=Path("engines"))
    checks = comp.checks()          # one Check named "canary"
    await comp.start(sink)          # returns at once; the worker starts in the background

One round: the supervisor (:mod:`sidecar.canary.supervisor`) runs the worker; the goldens
(:mod:`sidecar.canary.golden_store`) are read off the loop; the judge
(:mod:`sidecar.canary.judge`, pure) turns the outcome into results and asks for side effects
(metrics, digest, SDC latch file, worker replacement), which this module carries out.

Conditions reported (all gate ``readiness`` and ``canary`` unless said otherwise):

- ``canary``: the worker ran the golden input and the output matched. ``Starting`` /
  ``LoadingEngine`` (UNKNOWN) until the first pass; ``WorkerCrashed``, ``CanaryTimeout``,
  ``CudaError``, ``EngineDeserializeFailed``, ``InsufficientGpuMemory`` ... (CRITICAL) while
  the worker is being replaced; ``CanaryMismatch`` (FATAL, sticky); ``CanarySkipped`` (OK)
  while the GPU is busy; ``ExclusiveProcessMode`` (OK, INFO: unmonitored).
- ``canary/latency``: WARNING when over budget (CRITICAL with ``latency_gates_readiness``).
- ``canary/worker-memory``: WARNING ``WorkerMemoryGrowth`` when the worker's RSS grows.
- ``canary/engine/<name>``: each opt-in production engine (``canary.production_engines``; also
  gates ``engine/<name>``): :mod:`sidecar.canary.production_keeper`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.canary.config import CanaryConfig
from sidecar.canary.consistency import DigestGauge
from sidecar.canary.golden_store import CanaryGoldens
from sidecar.canary.judge import CanaryJudge, Judgement
from sidecar.canary.metrics import CanaryMetrics
from sidecar.canary.outcome import RunOutcome
from sidecar.canary.production_keeper import ProductionEngines
from sidecar.canary.protocol import FAULT_MODES, GPU_FAULTS, FaultSpec, LoadRequest
from sidecar.canary.sdc_screen import SdcScreen
from sidecar.canary.supervisor import CanarySupervisor, SupervisorSettings
from sidecar.canary.verdicts import CHECK_NAME, GATES, WorkerView, sdc_state_result
from sidecar.core.protocols import Check, GpuStateView, ResultSink
from sidecar.core.values import CheckResult
from sidecar.runtime.safeload import short_repr
from sidecar.runtime.scenario import ScenarioFile

log = logging.getLogger(__name__)


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
        self.production = ProductionEngines(config)
        self.load_request = LoadRequest(
            runner=config.runner,
            manifest=str(self.manifest_path.resolve()),
            tensorrt_manifest=str(self.trt_manifest_path.resolve()),
            productions=self.production.specs(),
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
        self.sdc = SdcScreen(registry, interval_s=self.interval_s, state_dir=state_dir)
        self.judge = CanaryJudge(config, sdc_persisted=self.sdc.store is not None)
        restored = self.sdc.persisted()
        if restored is not None:  # a silent-data-corruption finding survives restarts
            self.judge.restore_sdc(*restored)
        self.goldens = CanaryGoldens(self.manifest_path, self.trt_manifest_path)
        self._check = CanaryCheck(self, self.interval_s, config.first_timeout_s + config.timeout_s + 5.0)
        self._sink: ResultSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.digests = DigestGauge(registry)
        if simulate and scenario is not None:
            scenario.subscribe(self._on_scenario)

    @property
    def passes(self) -> int:
        """Rounds that matched their golden (while no finding held)."""
        return self.judge.passes

    @property
    def last_pass_at(self) -> float | None:
        return self.judge.last_pass_at

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
        config change is no evidence): its mismatch and production latches (with their
        reason, reset generation and recovery progress) where they hold more than this one's
        own (see :meth:`CanaryJudge.take_over`). SDC latches it persisted after this one read
        the state file are added here and the file is rewritten whole (the old one may have
        rewritten it without this one's)."""
        now = self.judge.take_over(old.judge, self.supervisor.runner)
        if now and self._sink is not None:  # replaces a pass this one held before it knew
            self._sink.submit(now)
        await self.sdc.take_over(old.sdc)

    # --- background keeper ------------------------------------------------------------------

    def _uses_gpu(self) -> bool:
        return self.config.runner != "onnxruntime"

    def _exclusive(self) -> bool:
        return bool(self.gpu_state is not None and self._uses_gpu() and self.gpu_state.exclusive_process())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):  # asyncio.timeout: see runtime.scheduler
            async with asyncio.timeout(seconds):
                await self._wake.wait()
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
                    self._sink.submit([self.judge.not_ready(self._worker())])
                continue
            wait = sup.backoff_remaining()
            if wait > 0:
                await self._sleep(wait)
                continue
            await self.production.before_load(sup.load_request.engines())
            err = await sup.start()
            if self._sink is not None:
                if err is None:
                    self._sink.trigger(CHECK_NAME)  # the first canary as soon as possible
                else:
                    self._sink.submit([self.judge.not_ready(self._worker())])

    def _on_scenario(self, doc: Mapping[str, Any]) -> None:
        if self._sink is not None:
            self._sink.trigger(CHECK_NAME)

    def _fault(self) -> FaultSpec | None:
        # The scenario's canary: key is read only in simulation.
        if not self.simulate or self.scenario is None:
            return None
        return fault_from_scenario(self.scenario.current())

    # --- one canary --------------------------------------------------------------------------

    def _worker(self) -> WorkerView:
        sup = self.supervisor
        return WorkerView(
            runner=sup.runner,
            detail=sup.detail,
            loading=sup.loading,
            last_death=sup.last_death,
            backoff_remaining_s=sup.backoff_remaining(),
            determinism=sup.determinism,
            rss_baseline=sup.rss_baseline,
        )

    async def _apply(self, j: Judgement) -> list[CheckResult]:
        """Carry out what a judgement asks for; its results."""
        if j.outcome is not None:
            self.metrics.results.labels(outcome=j.outcome).inc()
        if j.max_abs_error is not None:
            self.metrics.max_abs_error.set(j.max_abs_error)
        if j.clear_digests:
            self.digests.clear()  # no digest of a wrong answer stands for this pod
        if j.digest is not None:
            self.digests.publish(*j.digest)
        if j.persist_sdc is not None:
            await self.sdc.latch(j.persist_sdc)
        if j.clear_sdc:
            await self.sdc.clear()
        if j.replace_worker is not None:
            await self.supervisor.replace("memory_limit", "WorkerMemoryLimit", j.replace_worker)
            self._wake.set()
        return j.results

    async def run_canary(self) -> list[CheckResult]:
        """One tick of the ``canary`` check."""
        sup = self.supervisor
        if self._exclusive():
            return await self._apply(self.judge.exclusive())
        generation = self.gpu_state.reset_generation() if self.gpu_state is not None else 0
        early = self.judge.before_run(generation, ready=sup.ready, worker=self._worker())
        if early is not None:
            return await self._apply(early)
        now = self.clock()
        busy = self.gpu_state is not None and self.gpu_state.busy()
        skipped = self.judge.skip(now=now, busy=busy, runner=sup.runner)
        if skipped is not None:
            return await self._apply(skipped)
        outcome = await sup.run(self._fault())
        if not outcome.ok:
            self._wake.set()  # let the keeper restart a dead worker without waiting
            return await self._apply(self.judge.run_failed(outcome, sup.runner))
        if outcome.runner == "tensor-core":
            return await self.judge_sdc(outcome, generation)
        held = self.judge.sdc_holds(outcome, sup.runner)
        if held is not None:
            return await self._apply(held)
        return await self._judge_golden(outcome, generation)

    async def _judge_golden(self, outcome: RunOutcome, generation: int) -> list[CheckResult]:
        try:  # read and parsed once, on a thread (never on the loop)
            golden = await self.goldens.get(outcome.runner)
        except (OSError, ValueError) as exc:
            return await self._apply(self.judge.golden_unreadable(exc))
        identity_fn = getattr(self.gpu_state, "identity", None)
        identity: Mapping[str, str] = identity_fn() if identity_fn is not None else {}
        j = self.judge.golden_round(
            outcome, golden, generation, now=self.clock(), worker=self._worker(), identity=identity
        )
        results = await self._apply(j)
        results.extend(await self._apply(self.judge.memory(outcome, self._worker())))
        prod = await self.production.rounds(outcome, generation, self.judge, self.supervisor, self.clock())
        results.extend(prod)
        return results

    async def judge_sdc(self, outcome: RunOutcome, generation: int) -> list[CheckResult]:
        """A tensor-core round: golden recomputed from the reported seed, bit-exact (off the
        loop), then judged; its findings persisted before the state file's health is read."""
        judged = await self.sdc.judge(outcome.outputs)
        j = self.judge.sdc_round(outcome, judged, generation, now=self.clock(), worker=self._worker())
        results = await self._apply(j)
        if j.final:
            return results
        # Fail closed: an unreadable state file may hold a finding; an unwritable one would let
        # a restart forget the next (the store's health lists the state dir: off the loop).
        problem = await asyncio.to_thread(lambda: self.sdc.problem)
        store = self.sdc.store
        state = sdc_state_result(problem, str(store.path) if store is not None else None)
        if state is not None:
            results.append(state)
        results.extend(await self._apply(self.judge.memory(outcome, self._worker())))
        return results
