"""The actions component: from verdict to action (engine rollback, degraded serving).

Wiring: ``ActionsComponent(parse_actions_config(sec), registry=..., announce=...)``; the app
tells it every result it records (:meth:`observe`, the ``ResultObserver`` protocol) and runs
its one check, ``actions``, every ``interval`` (and at once when evidence changed: the
component triggers it). ``announce`` receives one :class:`~sidecar.model.Transition` per action
(the Kubernetes Event emitter is such a listener).

Conditions reported (all gate only the ``primary`` service, never ``readiness``):

- ``degraded/<engine>``: CRITICAL ``ServingFallback`` while the fallback serves, so ``primary``
  is NOT_SERVING while readiness stays SERVING; OK otherwise (reason ``UnderPressure``,
  ``FallbackNotVerified``, ``DegradeGaveUp`` or a dry-run note while it only reports);
- ``actions/<engine>/rollback``: WARNING ``RolledBack`` (pinned to the last good version),
  ``RollbackPending``, ``NoGoodVersion``, ``RollbackGaveUp``, ``RollbackFlapping``; OK with
  ``GpuFaultNoRollback`` while a GPU-level fault blocks a rollback.

Every action is a log line, a ``trt_health_actions`` count, an announced transition (Event)
and the labels of those conditions (Diagnostics): evidence, versions, the calls and result.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client import CollectorRegistry

from sidecar.actions.config import ActionsConfig, EngineActions
from sidecar.actions.degrade import DegradeMachine
from sidecar.actions.evidence import EvidenceBook
from sidecar.actions.metrics import ActionMetrics
from sidecar.actions.report import ActionRecord, engine_conditions, report_action
from sidecar.actions.repository import ActionCallError, Driver, RepositoryClient, make_driver
from sidecar.actions.rollback import DEGRADE, RESTORE, Decision, RollbackMachine
from sidecar.core.protocols import Check, ResultSink
from sidecar.core.values import CheckResult, Transition
from sidecar.workload.config import WorkloadConfig
from sidecar.workload.probes import WorkloadProbe, make_probe

log = logging.getLogger(__name__)

CHECK_NAME = "actions"
WORKLOAD = "workload"

ProbeFactory = Callable[[str, str | None], WorkloadProbe | None]


def workload_probe_factory(workload: WorkloadConfig | None) -> ProbeFactory | None:
    """The post-action inference: the workload probe's own request and expected answer, sent to
    the version that should serve. Only for the model the workload probe asks (its golden
    input and output belong to that model) and only over KServe v2 HTTP."""
    if workload is None or not workload.enabled or workload.kind != "kserve-http" or not workload.inputs:
        return None
    wl = workload

    def factory(model: str, version: str | None) -> WorkloadProbe | None:
        if model != wl.model:
            return None
        return make_probe(dataclasses.replace(wl, model_version=version or ""))

    return factory


@dataclass
class _Engine:
    spec: EngineActions
    rollback: RollbackMachine
    degrade: DegradeMachine
    fault_seen_at: float | None = None
    last: ActionRecord | None = None
    dry_run_last: tuple[str, str | None] | None = None
    labels: dict[str, str] = field(default_factory=dict)


class _ActionsCheck:
    def __init__(self, comp: ActionsComponent) -> None:
        self._c = comp
        self.name = CHECK_NAME
        self.interval_s = comp.config.interval_s
        self.timeout_s = 4 * comp.config.timeout_s + 5.0

    async def run(self) -> Sequence[CheckResult]:
        return await self._c.tick()

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return []


class ActionsComponent:
    name = "actions"

    def __init__(
        self,
        config: ActionsConfig,
        *,
        registry: CollectorRegistry,
        clock: Callable[[], float] = time.monotonic,
        announce: Callable[[Transition], None] | None = None,
        probe_factory: ProbeFactory | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.announce = announce
        self.probe_factory = probe_factory
        self.metrics = ActionMetrics(registry)
        self.book = EvidenceBook()
        self.history: deque[ActionRecord] = deque(maxlen=32)
        self.client = RepositoryClient(config.url, config.timeout_s, transport)
        self.driver: Driver | None = None
        self.driver_problem = ""
        try:
            self.driver = make_driver(config.server, self.client, config.repository_dir)
        except ActionCallError as exc:
            self.driver_problem = str(exc)
        self._engines = [
            _Engine(
                e,
                RollbackMachine(e.engine, config.rollback),
                DegradeMachine(e.engine, config.degrade, config.rollback),
            )
            for e in config.engines
        ]
        self._sink: ResultSink | None = None
        self._check = _ActionsCheck(self)
        self._adopted = False  # the pins an earlier run left were looked for

    # -- Component / ResultObserver --------------------------------------------------------

    def checks(self) -> Sequence[Check]:
        return [self._check] if self.config.enabled and self._engines else []

    async def start(self, sink: ResultSink) -> None:
        self._sink = sink

    async def stop(self) -> None:
        await self.client.close()

    def observe(self, results: Iterable[CheckResult]) -> None:
        """Fold results into the evidence (never blocks); trigger the check on news."""
        if not self.config.enabled:
            return
        relevant = False
        now = self.clock()
        for r in results:
            if r.name.startswith(("actions/", "degraded/")):
                continue
            self.book.add((r,))
            relevant = True
            if r.name == WORKLOAD and r.ok and isinstance(r.value, int | float):
                for e in self._engines:
                    if r.labels.get("model", e.spec.model) == e.spec.model:
                        e.rollback.latency_sample(float(r.value))
        if not relevant:
            return
        for e in self._engines:
            ev = self.book.engine(e.spec.engine)
            if ev.fault is None:
                e.fault_seen_at = None
            elif e.fault_seen_at is None:
                e.fault_seen_at = now
        self._update()
        if self._sink is not None and self.checks():
            self._sink.trigger(CHECK_NAME)

    # -- the decision loop -----------------------------------------------------------------

    def _update(self) -> list[str | None]:
        """Fold the evidence into every machine (also on each observe: a version that verified
        and was replaced before the next tick is still known as good). Returns each engine's
        fallback version."""
        gpu = self.book.gpu_fault()
        d = self.config.degrade
        pressure = self.book.pressure(
            min_free_mib=d.min_free_mib, canary_latency=d.canary_latency, throttling=d.throttling
        )
        versions: list[str | None] = []
        for e in self._engines:
            ev = self.book.engine(e.spec.engine)
            e.rollback.update(ev, gpu)
            fb_version, fb_ready, fb_why = self._fallback(e, ev.fallback)
            e.degrade.update(pressure if e.spec.degrade else None, fb_ready, fb_why, self.clock())
            versions.append(fb_version)
        return versions

    async def take_over(self, old: ActionsComponent) -> None:
        """A reload's replacement takes the old component's evidence, machines and history
        (the pins it made, the versions that failed here), under its own settings."""
        self.book = old.book
        self.history.extend(old.history)
        self._adopted = old._adopted
        previous = {e.spec.engine: e for e in old._engines}
        for e in self._engines:
            o = previous.get(e.spec.engine)
            if o is None or o.spec.model != e.spec.model:
                continue
            e.rollback, e.degrade = o.rollback, o.degrade
            e.rollback.retune(self.config.rollback)
            e.degrade.retune(self.config.degrade, self.config.rollback)
            e.fault_seen_at, e.last = o.fault_seen_at, o.last

    async def _adopt_pins(self) -> None:
        """Once: a pin an earlier run left on the server (parked versions) is this run's pin,
        so it is released when the version on the volume verifies (never left behind)."""
        self._adopted = True
        if self.driver is None:
            return
        for e in self._engines:
            if e.rollback.pinned is not None or e.degrade.active:
                continue
            pin = await self.driver.current_pin(e.spec.model)
            if pin is None:
                continue
            log.warning(
                "the main server is pinned by an earlier run; adopting the pin",
                extra={"engine": e.spec.engine, "model": e.spec.model, "pinned": pin},
            )
            fallback = self._fallback(e, self.book.engine(e.spec.engine).fallback)[0]
            if pin == fallback:
                e.degrade.active = True  # restored (to no pin) once the pressure is gone
            else:
                e.rollback.pinned = pin

    async def tick(self) -> list[CheckResult]:
        """Update every machine from the evidence, take due actions, report."""
        if not self.config.enabled:
            return []
        if not self._adopted:
            await self._adopt_pins()
        out: list[CheckResult] = []
        for e, fb_version in zip(self._engines, self._update(), strict=True):
            now = self.clock()
            decision: Decision | None = None
            if e.spec.degrade:
                decision = e.degrade.decide(now, fb_version)
            if decision is None and e.spec.rollback:
                decision = e.rollback.decide(now)
            if decision is not None:
                await self._act(e, decision, now)
            out.extend(self._results(e))
        return out

    def _fallback(self, e: _Engine, named: str | None) -> tuple[str | None, bool, str]:
        if not named:
            return e.spec.fallback_version, False, "the manifest names no fallback"
        fb = self.book.engine(named)
        version = e.spec.fallback_version or fb.version
        if not fb.verified:
            return version, False, f"fallback {named} not verified ({fb.fault or 'not reported yet'})"
        if self.config.degrade.require_fallback_canary and not fb.canary_passed:
            return version, False, f"fallback {named}: its canary (canary/engine/{named}) has not passed"
        if version is None:
            return None, False, f"fallback {named} has no version"
        return version, True, f"fallback {named} version {version} verified"

    async def _act(self, e: _Engine, decision: Decision, now: float) -> None:
        spec = e.spec
        verdict_at = (
            e.degrade.pressure_since
            if decision.kind == DEGRADE
            else e.degrade.clear_since
            if decision.kind == RESTORE
            else e.fault_seen_at
        )
        verdict_at = now if verdict_at is None else verdict_at
        target = decision.target
        if decision.kind == RESTORE:
            target = e.rollback.pinned  # back to what the rollback machine wants served
        elif decision.kind != DEGRADE and e.degrade.active:
            # the fallback serves: the rollback applies when it is restored
            e.rollback.done(decision, True, now)
            return
        started = self.clock()
        if self.config.dry_run or self.driver is None:
            plan = self.driver.plan(spec.model, target) if self.driver else self.driver_problem
            key = (decision.kind, target)
            if e.dry_run_last == key:
                return
            e.dry_run_last = key
            rec = ActionRecord(
                spec.engine, spec.model, decision.kind, target, decision.previous, decision.evidence,
                "dry_run" if self.driver else "failed", f"would: {plan}", "unchanged",
                verdict_at, started, started, started,
            )  # fmt: skip
            self._record(e, rec)
            return
        e.dry_run_last = None
        calls, outcome, server = "", "failed", ""
        called = started
        try:
            calls = await self.driver.pin(spec.model, target)
            called = self.clock()
            served = await self.client.served(spec.model)
            server = served.describe()
            ok = bool(served.ready) and (target is None or served.ready == (target,))
            if ok and self.probe_factory is not None:
                ok, note = await self._infer(spec.model, target)
                server += f"; inference: {note}"
            outcome = "ok" if ok else "failed"
        except ActionCallError as exc:
            calls = calls or str(exc)
            server = server or f"error: {exc}"
        rec = ActionRecord(
            spec.engine, spec.model, decision.kind, target, decision.previous, decision.evidence,
            outcome, calls, server, verdict_at, started, called, self.clock(),
        )  # fmt: skip
        machine = e.degrade if decision.kind in (DEGRADE, RESTORE) else e.rollback
        machine.done(decision, outcome == "ok", self.clock())
        self._record(e, rec)

    async def _infer(self, model: str, version: str | None) -> tuple[bool, str]:
        assert self.probe_factory is not None
        probe = self.probe_factory(model, version)
        if probe is None:
            return True, "not configured"
        try:
            got = await probe.probe()
        finally:
            await probe.close()
        return got.ok, got.message if got.ok else f"{got.reason}: {got.message}"

    def _record(self, e: _Engine, rec: ActionRecord) -> None:
        self.history.append(rec)
        e.last = rec
        report_action(rec, self.metrics, self.announce)

    def _results(self, e: _Engine) -> list[CheckResult]:
        self.metrics.degraded.labels(e.spec.engine).set(1 if e.degrade.active else 0)
        self.metrics.rolled_back.labels(e.spec.engine).set(1 if e.rollback.pinned is not None else 0)
        return engine_conditions(
            e.spec,
            e.rollback,
            e.degrade,
            e.last,
            now=self.clock(),
            dry_run=self.config.dry_run and e.dry_run_last is not None,
            dry_run_config=self.config.dry_run,
        )
