"""Composition root: config -> backends -> checks -> policy -> publishers.

The only place where the pieces are wired together. Order at start:

1. servers bind (gRPC plaintext, optional TLS port and Unix socket, HTTP); every service is
   NOT_SERVING;
2. loops start (scheduler, liveness heartbeat, scenario / config watchers) and components
   start in the background;
3. ``startup`` and ``liveness`` turn SERVING at once (they never wait for the GPU);
   ``readiness`` follows the checks.

Shutdown (SIGTERM/SIGINT): every service NOT_SERVING first, Watch streams are sent that and
ended, in-flight RPCs drain within the grace period, components stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.config import ConfigError, SidecarConfig, load_config
from sidecar.core.errors import BindError, TlsMaterialError
from sidecar.core.policy import HealthPolicy
from sidecar.core.protocols import Component, ResultObserver, TransitionListener
from sidecar.core.values import (
    CheckResult,
    CheckStatus,
    Condition,
    ServiceVerdict,
    Severity,
    Transition,
)
from sidecar.gpu.state_proxy import GpuStateProxy
from sidecar.publish.diagnostics import DiagnosticsService, LatestVerdict
from sidecar.publish.fanout import PublisherSet
from sidecar.publish.grpc_health import NOT_SERVING, HealthRegistry, HealthService
from sidecar.publish.grpc_server import GrpcServer, start_grpc_server
from sidecar.publish.healthz import HealthzPublisher
from sidecar.publish.http import HttpPublisher, HttpSnapshot
from sidecar.publish.log import configure_logging
from sidecar.publish.metrics import CoreMetrics, RpcCollector, SectionCollectors
from sidecar.runtime.heartbeat import Heartbeat
from sidecar.runtime.scenario import ScenarioFile
from sidecar.runtime.scheduler import Scheduler

log = logging.getLogger(__name__)

# Config sections with a component, in start order (the GPU first: the others ask it).
COMPONENT_SECTIONS = ("gpu", "canary", "engines", "workload", "trends")
LISTENER_SECTIONS = ("events",)
ALL_SECTIONS = COMPONENT_SECTIONS + LISTENER_SECTIONS


class _SlotSink:
    """The ResultSink of one component. Live, it forwards to the app. *Staged* (a replacement
    built by a reload, running beside the component it replaces), it keeps the latest result
    of each condition instead, so the replacement's start-up results ("loading", "starting")
    never reach the verdict; :meth:`go_live` hands them over at the swap. Always on the loop
    thread except :meth:`submit` and :meth:`trigger` (thread-safe)."""

    def __init__(self, app: SidecarApp, *, staged: bool) -> None:
        self._app = app
        self.staged = staged
        self.held: dict[str, CheckResult] = {}
        self.reported: set[str] = set()  # condition names this component ever reported
        self.ran: set[str] = set()  # checks that completed (or timed out) a run
        self.fatal = False  # a held result is a FATAL failure: swap at once
        self.retired = False  # the component was replaced: what it still sends is dropped
        self._retires: list[tuple[list[str], list[str]]] = []  # asked while staged
        self._dropped: list[str] = []  # CheckErrors its check loops retired while staged
        self.changed = asyncio.Event()

    def submit(self, results: Iterable[CheckResult]) -> None:
        batch = list(results)
        loop = self._app._loop
        if loop is None:
            return
        if threading.get_ident() == self._app._loop_thread:
            self.take(batch)
        else:
            loop.call_soon_threadsafe(self.take, batch)

    def trigger(self, check_name: str) -> None:
        self._app.trigger(check_name)

    def retire(self, prefixes: Sequence[str], services: Sequence[str]) -> None:
        """Thread-safe (ConditionRetirer): a source of this component went away. Staged, the
        request waits for the swap (the old component still reports those conditions)."""
        loop = self._app._loop
        if loop is None:
            return
        if threading.get_ident() == self._app._loop_thread:
            self._retire_now(list(prefixes), list(services))
        else:
            loop.call_soon_threadsafe(self._retire_now, list(prefixes), list(services))

    def _retire_now(self, prefixes: list[str], services: list[str]) -> None:
        if self.retired:
            return
        starts = tuple(prefixes)
        self.reported = {n for n in self.reported if not n.startswith(starts)}
        for name in [n for n in self.held if n.startswith(starts)]:
            del self.held[name]
        if self.staged:
            self._retires.append((prefixes, services))
        else:
            self._app._retire_now(prefixes, services)

    def retire_checks(self, names: Sequence[str]) -> None:
        """A check loop of this component retires the CheckError it reported under the
        check's own name (the check works again; its results use other names). Staged, the
        error leaves what this component holds (it would otherwise stay "no evidence yet"
        and be recorded at the swap) and the live condition of that name is dropped only at
        the swap: until then it is the old component's."""
        if self.retired:
            return
        if not self.staged:
            self._app._drop_conditions(names)
            return
        for name in names:
            self.held.pop(name, None)
            self.reported.discard(name)
            self._dropped.append(name)
        self.changed.set()

    def take(self, results: Sequence[CheckResult]) -> None:
        """Scheduler and event results of this component (loop thread)."""
        if self.retired:
            return
        self.reported.update(r.name for r in results)
        if not self.staged:
            self._app._submit_now(results)
            return
        for r in results:
            self.held.pop(r.name, None)
            self.held[r.name] = r
            if r.name in self._dropped:  # reported again since: not to be dropped
                self._dropped = [n for n in self._dropped if n != r.name]
            if r.status is CheckStatus.FAIL and r.severity >= Severity.FATAL:
                self.fatal = True
        self.changed.set()

    def observe_run(self, check: str, outcome: str, seconds: float) -> None:
        """A run of one of this component's checks ended. Staged, only its metrics are
        recorded: the run is no first result of the live check of that name (the swap
        settles the checks that ran)."""
        self.ran.add(check)
        if self.staged:
            self._app._record_run(check, outcome, seconds)
        else:
            self._app._observe_run(check, outcome, seconds)
        self.changed.set()

    def settled(self, checks: Iterable[str]) -> bool:
        """Every check ran once and no held result is still "no evidence yet" (UNKNOWN)."""
        return set(checks) <= self.ran and all(
            r.status is not CheckStatus.UNKNOWN for r in self.held.values()
        )

    def go_live(self) -> None:
        self.staged = False
        for prefixes, services in self._retires:
            self._app._retire_now(prefixes, services)
        self._retires.clear()
        held = list(self.held.values())
        self.held.clear()
        if held:
            self._app._submit_now(held)
        # after the held results: dropping first could publish a verdict without either
        dropped, self._dropped = self._dropped, []
        if dropped:
            self._app._drop_conditions(dropped)


class SidecarApp:
    """The running sidecar. Implements ResultSink for components and the scheduler."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self.clock = clock
        self.started_unix = time.time()
        self.policy = HealthPolicy(config.policy)
        self.health = HealthRegistry()
        self.health_service = HealthService(
            self.health,
            max_watchers=config.grpc.max_watchers,
            list_max_services=config.grpc.list_max_services,
            max_service_name_bytes=config.grpc.max_service_name_bytes,
        )
        self.metrics = CoreMetrics(self.registry)
        self.registry.register(RpcCollector(self.health_service))
        self._components_registry = SectionCollectors()
        self.registry.register(self._components_registry)
        self._diagnostics = LatestVerdict()
        self._healthz = HealthzPublisher()
        self.publishers = PublisherSet([self.health, self.metrics, self._diagnostics, self._healthz])
        self.scheduler = Scheduler(
            self._submit_now,
            jitter=config.jitter,
            clock=clock,
            observe_run=self._observe_run,
            retire=self._drop_conditions,
        )
        self._slots: dict[str, Any] = {}
        self._sinks: dict[str, _SlotSink] = {}
        # reloads run one at a time; requests meanwhile collapse into one more (SIGHUP storm)
        self._reload_lock = asyncio.Lock()
        self._reload_again = False
        self._reload_task: asyncio.Task[None] | None = None
        self.heartbeat = Heartbeat(
            config.liveness,
            policy=self.policy,
            scheduler=self.scheduler,
            publishers=self.publishers,
            republish=self._publish,
            record_lag=self.metrics.loop_lag.set,
            clock=clock,
        )
        self.gpu_state = GpuStateProxy()
        self.scenario: ScenarioFile | None = None
        self.grpc: GrpcServer | None = None
        self.http: HttpPublisher | None = None
        self.grpc_port = 0
        self.grpc_tls_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        # flag overrides of the command line, re-applied on every config reload
        self.overrides: Mapping[tuple[str, ...], Any] = {}
        self._observers_failing: set[str] = set()  # ResultObservers in a failure streak
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._stopped = False
        self._config_stamp: tuple[int, int] | None = None
        self._served: dict[str, bool] = {}  # service -> SERVING, as last logged
        # every service starts NOT_SERVING (the stock servicers start "" as SERVING)
        self._publish()

    # -- ResultSink -----------------------------------------------------------------------
    def submit(self, results: Iterable[CheckResult]) -> None:
        """Thread-safe: record results (event-driven path)."""
        batch = list(results)
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._submit_now(batch)
        else:
            loop.call_soon_threadsafe(self._submit_now, batch)

    def trigger(self, check_name: str) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self.scheduler.trigger(check_name)
        else:
            loop.call_soon_threadsafe(self.scheduler.trigger, check_name)

    def retire(self, prefixes: Sequence[str], services: Sequence[str]) -> None:
        """Thread-safe: a source went away (a GPU left the inventory): drop its conditions,
        their metric series, and its services that nothing else gates."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._retire_now(list(prefixes), list(services))
        else:
            loop.call_soon_threadsafe(self._retire_now, list(prefixes), list(services))

    def _retire_now(self, prefixes: list[str], services: list[str]) -> None:
        names = [c.name for c in self.policy.conditions() if c.name.startswith(tuple(prefixes))]
        self.policy.forget(names)
        self.metrics.drop_conditions(names)
        gone = self.policy.forget_services(services)
        self.health.remove(gone)
        if names or gone:
            log.info("conditions retired", extra={"conditions": names, "services": gone})
        self._publish()

    # -- policy -> publishers -------------------------------------------------------------
    def _submit_now(self, results: Sequence[CheckResult]) -> None:
        if not results:
            return
        now = self.clock()
        for r in results:
            log.debug(
                "result",
                extra={
                    "condition": r.name,
                    "status": r.status.value,
                    "reason": r.reason,
                    "detail": r.message,
                },
            )
        transitions = self.policy.observe(results, now)
        for t in transitions:
            self._on_transition(t)
        for component in self.components:
            if isinstance(component, ResultObserver):
                self._tell_observer(component, results)
        self._publish()

    def _tell_observer(self, component: ResultObserver, results: Sequence[CheckResult]) -> None:
        """A failing observer loses its own observation only: the results are still
        published, the submitting check loop never sees the exception, and the fault is
        logged once per failure streak (not once per result)."""
        name = str(getattr(component, "name", type(component).__name__))
        try:
            component.observe(results)
        except Exception:
            if name not in self._observers_failing:
                self._observers_failing.add(name)
                log.exception("result observer failed", extra={"component": name})
            return
        if name in self._observers_failing:
            self._observers_failing.discard(name)
            log.info("result observer recovered", extra={"component": name})

    def _observe_run(self, check: str, outcome: str, seconds: float) -> None:
        self.policy.settle(check)
        self._record_run(check, outcome, seconds)

    def _record_run(self, check: str, outcome: str, seconds: float) -> None:
        self.metrics.record_run(check, outcome, seconds)

    def _on_transition(self, t: Transition) -> None:
        to = "unknown" if t.healthy is None else ("healthy" if t.healthy else "unhealthy")
        level = logging.INFO if t.healthy is not False else logging.WARNING
        log.log(
            level,
            "condition changed",
            extra={
                "condition": t.condition,
                "to": to,
                "from": "unknown" if t.previous is None else ("healthy" if t.previous else "unhealthy"),
                "reason": t.reason,
                "detail": t.message,
                "severity": t.severity.name.lower(),
                "labels": dict(t.labels),
            },
        )
        self.metrics.record_transition(t, to)
        for listener in self.listeners:
            try:
                listener.on_transition(t)
            except Exception:
                log.exception("transition listener failed")

    def publish(self) -> None:
        """The policy's verdict, to every publisher (event loop)."""
        verdicts = self.policy.verdicts()
        self._log_service_changes(verdicts)
        self.publishers.publish(self.policy.conditions(), verdicts)

    _publish = publish

    def _log_service_changes(self, verdicts: Mapping[str, Any]) -> None:
        """One line per service whose status changed (every service starts NOT_SERVING)."""
        previous = self._served
        now = {name: bool(v.serving) for name, v in verdicts.items()}
        for name, v in sorted(verdicts.items()):
            if now[name] == previous.get(name, False):
                continue
            planned = tuple(v.reasons) == ("ShuttingDown",)  # a stop we were asked for
            log.log(
                logging.INFO if v.serving or planned else logging.WARNING,
                "service changed",
                extra={
                    "service": name,
                    "to": "SERVING" if v.serving else "NOT_SERVING",
                    "from": "SERVING" if previous.get(name, False) else "NOT_SERVING",
                    "reasons": list(v.reasons),
                },
            )
        self._served = now

    def snapshot(self) -> tuple[Sequence[Condition], Mapping[str, ServiceVerdict]]:
        """The latest conditions and verdicts as served; safe to read from RPC threads
        (published whole by the event loop after every change)."""
        return self._diagnostics()

    def http_snapshot(self) -> HttpSnapshot:
        return self._healthz.snapshot()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind servers, start loops and components. Raises BindError / TlsMaterialError."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        cfg = self.config
        await self._start_grpc()
        if cfg.http.enabled:
            self.http = HttpPublisher(
                cfg.http.host,
                cfg.http.port,
                self.registry,
                self.http_snapshot,
                max_connections=cfg.http.max_connections,
                request_timeout_s=cfg.http.request_timeout_s,
            )
            self.http.start()
        if cfg.simulate:
            self.scenario = ScenarioFile(Path(cfg.scenario) if cfg.scenario else None)
            await self.scenario.start()
        for section in ALL_SECTIONS:
            self._install(section, cfg)
        for section in ALL_SECTIONS:
            await self._start_slot(section)
        self._tasks.append(asyncio.create_task(self.heartbeat.run(), name="heartbeat"))
        self.heartbeat.start_watchdog()
        if cfg.config_file:
            self._config_stamp = self._stat_config()
            self._tasks.append(asyncio.create_task(self._watch_config(), name="config-watch"))
        for task in self._tasks:
            task.add_done_callback(_report_task_end)
        self.policy.set_started(True)
        self._publish()
        log.info(
            "sidecar started",
            extra={
                "grpc_port": self.grpc_port,
                "grpc_tls_port": self.grpc_tls_port or None,
                "http_port": self.http.port if self.http else None,
                "simulate": cfg.simulate,
                "components": [c.name for c in self.components],
                "version": __version__,
            },
        )

    async def _start_grpc(self) -> None:
        diagnostics = DiagnosticsService(
            self.snapshot,
            monotonic=self.clock,
            started_unix=self.started_unix,
            simulated=self.config.simulate,
        )
        self.grpc = start_grpc_server(self.config.grpc, self.health_service, diagnostics)
        self.grpc_port, self.grpc_tls_port = self.grpc.port, self.grpc.tls_port

    def _build_section(self, section: str, cfg: SidecarConfig, registry: CollectorRegistry) -> Any:
        """Instantiate the component of one config section (nothing starts here), or None.
        Imports are local so `probe` stays light; every metric goes to ``registry``."""
        comps = cfg.components
        if section not in comps:
            return None
        sec = comps[section]
        gpu_state = self.gpu_state
        common: dict[str, Any] = {"simulate": cfg.simulate, "scenario": self.scenario}
        if section == "gpu":
            from sidecar.gpu.component import GpuComponent

            return GpuComponent(sec, registry=registry, state_dir=Path(cfg.state_dir), **common)
        if section == "canary":
            from sidecar.canary.component import CanaryComponent

            engines_dir = Path(cfg.engines_dir) if cfg.engines_dir else default_engines_dir()
            return CanaryComponent(
                sec,
                registry=registry,
                gpu_state=gpu_state,
                engines_dir=engines_dir,
                state_dir=Path(cfg.state_dir),  # persisted SDC latches (tensor-core runner)
                **common,
            )
        if section == "engines":
            from sidecar.engine.component import EngineComponent

            return EngineComponent(
                sec,
                registry=registry,
                state_dir=Path(cfg.state_dir),
                gpu_compute_capability=gpu_state.compute_capability,
                gpu_free_memory_mib=gpu_state.free_memory_mib,
                **common,
            )
        if section == "workload":
            from sidecar.workload.component import WorkloadComponent

            return WorkloadComponent(sec, registry=registry, gpu_state=gpu_state)
        if section == "trends":
            from sidecar.trends.component import TrendComponent

            return TrendComponent(
                sec, registry=registry, state_dir=Path(cfg.state_dir), gpu_samples=gpu_state
            )
        if section == "events" and getattr(sec, "enabled", False):
            from sidecar.publish.events import KubeEventEmitter

            return KubeEventEmitter(sec, registry=registry)
        return None

    @property
    def components(self) -> list[Component]:
        return [self._slots[s] for s in COMPONENT_SECTIONS if self._slots.get(s) is not None]

    @property
    def listeners(self) -> list[TransitionListener]:
        return [self._slots[s] for s in LISTENER_SECTIONS if self._slots.get(s) is not None]

    def _install(self, section: str, cfg: SidecarConfig) -> None:
        """Build one section's component on a fresh registry and put it in its slot."""
        registry = CollectorRegistry()
        obj = self._build_section(section, cfg, registry)
        self._put(section, obj, registry, _SlotSink(self, staged=False))

    def _put(self, section: str, obj: Any, registry: CollectorRegistry, sink: _SlotSink) -> None:
        self._slots[section] = obj
        self._sinks[section] = sink
        self._components_registry.targets[section] = registry
        if section == "gpu":
            self.gpu_state.swap(obj)

    async def _start_component(
        self, section: str, obj: Any, sink: _SlotSink, *, expect: bool, jitter: float | None = None
    ) -> None:
        if section in COMPONENT_SECTIONS:
            checks = obj.checks()
            if expect:  # readiness waits for a check's first result
                self.policy.expect(c.name for c in checks)
            self.scheduler.add(
                checks,
                submit=sink.take,
                observe_run=sink.observe_run,
                retire=sink.retire_checks,
                staged=sink.staged,
                jitter=jitter,
            )
            await obj.start(sink)
        else:
            start = getattr(obj, "start", None)
            if start is not None:
                await start()

    async def _start_slot(self, section: str) -> None:
        obj = self._slots.get(section)
        if obj is None:
            return
        await self._start_component(section, obj, self._sinks[section], expect=True)

    def _unsubscribe(self, obj: Any) -> None:
        """A retired component (and its GPU backend) hears no more scenario changes."""
        if self.scenario is not None and obj is not None:
            for owner in (obj, getattr(obj, "backend", None)):
                if owner is not None:
                    self.scenario.unsubscribe_owner(owner)

    async def _stop_component(self, section: str, obj: Any, *, staged: bool = False) -> None:
        self._unsubscribe(obj)
        try:
            if section in COMPONENT_SECTIONS:
                await self.scheduler.remove((c.name for c in obj.checks()), staged=staged)
            stop = getattr(obj, "stop", None)
            if stop is not None:
                await asyncio.wait_for(stop(), timeout=self.config.shutdown_grace_s)
        except Exception:
            log.exception("component stop failed", extra={"component": section})

    async def _stop_slot(self, section: str) -> None:
        obj = self._slots.get(section)
        if obj is None:
            return
        await self._stop_component(section, obj)

    async def _restart_sections(
        self, new: SidecarConfig, sections: list[str], commit: Callable[[], None] | None = None
    ) -> None:
        """Replace the components of the changed sections, make-before-break.

        1. Every replacement is built (nothing starts; the GPU component first flushes its
           latches so the replacement reads the current ones). A build that fails raises:
           nothing was touched, the old components run on.
        2. The replacements start *staged*: their checks run beside the old ones, their
           results are held (:class:`_SlotSink`), the old components keep reporting. A start
           that fails stops the replacements started so far and raises.
           What a staged loop does stays with its replacement: a run settles no live
           check, a retired CheckError leaves only the held results.
        3. Each section swaps as soon as its replacement's checks ran and none of its
           results is still "no evidence yet", or one of them is FATAL (never waiting for
           another section), and every section once the first timeouts passed: the old
           checks and component stop, GPU latches the old one set meanwhile are handed over,
           the held results are recorded. Just before the first swap ``commit`` runs (the
           reload's other changes apply only once it can no longer be rejected).
           Conditions carry over (same names), so an unchanged verdict does not blink;
           conditions no longer reported are dropped once every check had time to report
           them. A failed start or a cancellation (shutdown) stops every replacement not
           swapped in yet.
        """
        built: list[tuple[str, Any, CollectorRegistry, _SlotSink]] = []
        for section in sections:
            old = self._slots.get(section)
            old_latches = getattr(old, "latches", None) if section == "gpu" else None
            if old_latches is not None:
                await asyncio.to_thread(old_latches.save)
            registry = CollectorRegistry()
            try:
                # a build reads files (latches, manifests): on a thread
                obj = await asyncio.to_thread(self._build_section, section, new, registry)
            except BaseException:  # the reload is rejected: nothing was started or swapped
                for _s, done, _r, _k in built:
                    self._unsubscribe(done)
                raise
            built.append((section, obj, registry, _SlotSink(self, staged=True)))
        started: list[tuple[str, Any, CollectorRegistry, _SlotSink]] = []
        swapped: set[str] = set()
        committed = False
        try:
            for item in built:
                section, obj, _registry, sink = item
                if obj is not None:
                    started.append(item)
                    await self._start_component(section, obj, sink, expect=False, jitter=new.jitter)
            # each staged check runs at once; its first results come within its (first) timeout
            new_checks = {
                section: [c.name for c in obj.checks()] if section in COMPONENT_SECTIONS else []
                for section, obj, _r, _s in built
                if obj is not None
            }
            grace = max(
                (
                    getattr(c, "first_timeout_s", None) or c.timeout_s
                    for _section, obj, _r, _s in built
                    if obj is not None and _section in COMPONENT_SECTIONS
                    for c in obj.checks()
                ),
                default=0.0,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace + 1.0
            waiting = list(built)
            while waiting:
                for *_rest, sink in waiting:
                    sink.changed.clear()  # before looking: a change from now on wakes us
                # a section swaps once its own replacement settled (or found a FATAL fault):
                # never waiting for another section's slow first run
                ready = [
                    item
                    for item in waiting
                    if item[1] is None or item[3].fatal or item[3].settled(new_checks[item[0]])
                ]
                left = deadline - loop.time()
                if not ready and left <= 0:
                    log.warning(
                        "config reload: replacement component still without evidence; swapping",
                        extra={"components": [item[0] for item in waiting]},
                    )
                    ready = list(waiting)
                if not ready:
                    waits = [asyncio.ensure_future(item[3].changed.wait()) for item in waiting]
                    try:
                        await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
                    continue
                if not committed:  # the point of no return: the reload applies from here
                    committed = True
                    if commit is not None:
                        commit()
                for item in ready:
                    waiting.remove(item)
                    section, obj, registry, sink = item
                    await self._swap_section(section, obj, registry, sink, new_checks.get(section, []))
                    swapped.add(section)
        except BaseException:  # a failed start, or the reload cancelled (shutdown)
            # every replacement not yet swapped in is stopped: nothing else would stop it
            for section, obj, _registry, _sink in started:
                if section not in swapped:
                    await self._stop_component(section, obj, staged=True)
            raise
        swap_at = self.clock()
        loop.call_later(grace + 1.0, self._forget_stale, swap_at)

    async def _swap_section(
        self,
        section: str,
        obj: Any,
        registry: CollectorRegistry,
        sink: _SlotSink,
        new_checks: list[str],
    ) -> None:
        """The old component of ``section`` stops, its replacement (staged) becomes the live
        one and its held results are recorded. Nothing is awaited after the promotion: a
        cancellation leaves the section either swapped or not."""
        old = self._slots.get(section)
        old_checks: list[str] = []
        if old is not None:
            if section in COMPONENT_SECTIONS:
                old_checks = [c.name for c in old.checks()]
            await self._stop_component(section, old)
            # late words of a stopped component (an event thread) are not evidence any more
            self._sinks[section].retired = True
        if section == "gpu" and old is not None and obj is not None:
            await asyncio.to_thread(_hand_over_latches, old, obj)
        if section == "canary" and old is not None and obj is not None:
            await _hand_over_canary(old, obj)
        if obj is not None:
            self.scheduler.promote(new_checks)
        # the staged runs were no first results of the live checks: the swap settles the
        # checks that ran; one without a first result yet holds readiness (fail closed); an
        # old check the replacement no longer has was removed
        for name in old_checks:
            if name not in new_checks:
                self.policy.settle(name)
        for name in new_checks:
            if name in sink.ran:
                self.policy.settle(name)
        self.policy.expect(n for n in new_checks if n not in sink.ran)
        self._put(section, obj, registry, sink)
        sink.go_live()

    def _stat_config(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.config.config_file)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    async def _watch_config(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            stamp = self._stat_config()
            if stamp != self._config_stamp and stamp is not None:
                self._config_stamp = stamp
                try:
                    await self.reload_config()
                except Exception:  # the watcher must survive any reload bug
                    log.exception("config reload failed")

    def request_reload(self) -> None:
        """SIGHUP: reload soon. Reloads run one at a time; requests that arrive while one
        runs collapse into one more reload after it (a SIGHUP storm is one or two reloads)."""
        self._reload_again = True
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.ensure_future(self._reload_requested())

    async def _reload_requested(self) -> None:
        while self._reload_again and not self._stopped:
            self._reload_again = False
            try:
                await self.reload_config()
            except Exception:  # the next SIGHUP must still work
                log.exception("config reload failed")

    async def reload_config(self, overrides: Mapping[tuple[str, ...], Any] | None = None) -> bool:
        """Re-read the config (SIGHUP / file change). A valid config applies; an invalid one is
        reported and the old one stays. Ports and TLS need a restart (reported). One reload
        at a time (a second waits for the first)."""
        async with self._reload_lock:
            if self._stopped:
                return False
            return await self._reload_once(overrides)

    async def _reload_once(self, overrides: Mapping[tuple[str, ...], Any] | None) -> bool:
        try:
            # reading and parsing a file never runs on the loop
            new = await asyncio.to_thread(
                load_config,
                config_file=self.config.config_file or None,
                overrides=overrides or self.overrides,
            )
        except ConfigError as exc:
            self.metrics.config_reloads.labels("rejected").inc()
            log.error("config reload rejected, old config stays", extra={"problems": exc.problems})
            return False
        old = self.config
        if new == old:
            self.metrics.config_reloads.labels("unchanged").inc()
            return True
        if new.grpc != old.grpc or new.http != old.http or new.simulate != old.simulate:
            log.warning("config reload: listener or simulation changes need a restart")

        def apply() -> None:  # only once the reload can no longer be rejected
            self.policy.reconfigure(new.policy)
            configure_logging(new.log_level, new.log_format)
            self.scheduler._jitter = new.jitter

        changed = [s for s in ALL_SECTIONS if new.components.get(s) != old.components.get(s)]
        if not changed:
            apply()
        else:
            try:
                await self._restart_sections(new, changed, commit=apply)
            except Exception as exc:
                self.metrics.config_reloads.labels("rejected").inc()
                log.exception(
                    "config reload failed while rebuilding components, old ones stay",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
                return False
        self.config = new
        self.metrics.config_reloads.labels("applied").inc()
        log.info("config reloaded")
        self._publish()
        return True

    def _forget_stale(self, since: float) -> None:
        """After a reload: drop conditions that no current component ever reported and that
        got no result since the swap."""
        keep: set[str] = set()
        for sink in self._sinks.values():
            keep |= sink.reported
        stale = [c.name for c in self.policy.conditions() if c.last_result_at < since and c.name not in keep]
        if stale:
            log.info("conditions no longer reported after reload", extra={"conditions": stale})
            self._drop_conditions(stale)

    def _drop_conditions(self, names: Sequence[str]) -> None:
        """Conditions whose source went away leave the policy, with their metric series."""
        names = [n for n in names if any(c.name == n for c in self.policy.conditions())]
        if not names:
            return
        self.policy.forget(names)
        self.metrics.drop_conditions(names)
        self._publish()

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Graceful: NOT_SERVING everywhere, watchers told and ended, drain, stop components."""
        if self._stopped:
            return
        self._stopped = True
        self.heartbeat.stop_watchdog()
        self.policy.set_shutting_down()
        self._publish()
        self.health.set_statuses({s: NOT_SERVING for s in self.health.snapshot()})
        self.health.close()  # every Watch stream: NOT_SERVING, then ended with OK
        grace = self.config.shutdown_grace_s
        await asyncio.to_thread(self.health_service.sender.shutdown, grace)
        if self._reload_task is not None:
            self._tasks.append(self._reload_task)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # a task that raised was reported by _report_task_end; it must not block the stop
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.grpc is not None:
            stopped = self.grpc.server.stop(grace)
            await asyncio.to_thread(stopped.wait, grace + 1.0)
        async with self._reload_lock:  # a reload called directly finishes (or cleans up) first
            pass
        for section in reversed(ALL_SECTIONS):
            await self._stop_slot(section)
        await self.scheduler.stop()
        if self.scenario is not None:
            await self.scenario.stop()
        if self.http is not None:
            self.http.stop()
        log.info("sidecar stopped")


def _hand_over_latches(old: Any, new: Any) -> None:
    """GPU latches the old component holds that were not in the file the replacement read
    (when it was built, after the old one flushed its state) move to the replacement, which
    then writes the file whole: the old one may have rewritten it when it stopped, without a
    latch only the replacement holds. By set, not by time: a latch's ``since`` is when its
    evidence started, not when it was added, so a latch added during the overlap may be dated
    before the flush. A latch the replacement read and no longer holds was cleared on
    evidence, and stays cleared."""
    old_store = getattr(old, "latches", None)
    new_store = getattr(new, "latches", None)
    if old_store is None or new_store is None:
        return
    known = new_store.read_from_file()
    for uuid, latches in old_store.all_latches().items():
        for latch in latches:
            if (uuid, latch) not in known and new_store.add(uuid, latch):
                log.warning(
                    "GPU latch handed over across the reload",
                    extra={"uuid": uuid, "reason": latch.reason},
                )
    new_store.mark_dirty()  # write even when nothing was handed over (see above)
    new_store.save()


async def _hand_over_canary(old: Any, new: Any) -> None:
    """The old canary component's findings (its mismatch, production and SDC latches) move to
    the replacement, which started fresh: a reload is no evidence that the GPU recovered."""
    take = getattr(new, "take_over_latches", None)
    if take is not None:
        await take(old)


def _report_task_end(task: asyncio.Task[Any]) -> None:
    """A loop of the app must run until stop: one that ended with an exception says so."""
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "background task failed",
            extra={"task": task.get_name()},
            exc_info=task.exception(),
        )


def default_engines_dir() -> Path:
    """engines/ of the source tree (demo canary model), or of the installed image."""
    here = Path(__file__).resolve().parent.parent / "engines"
    return here


def write_ports_file(path: str, app: SidecarApp) -> None:
    """The ports the app bound, as JSON, written atomically (a reader never sees half a file)."""
    doc = {
        "grpc_port": app.grpc_port,
        "grpc_tls_port": app.grpc_tls_port or None,
        "http_port": app.http.port if app.http else None,
        "pid": os.getpid(),
    }
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cannot write the ports file", extra={"path": path[:200], "error": str(exc)[:300]})
        with contextlib.suppress(OSError):
            os.unlink(tmp)


async def serve(
    config: SidecarConfig, overrides: Mapping[tuple[str, ...], Any], *, ports_file: str | None = None
) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code. With ``ports_file``, the bound
    ports are written there as JSON once serving (the way to learn what port 0 became)."""
    from sidecar.core.errors import EXIT_BIND, EXIT_INTERNAL, EXIT_OK, EXIT_TLS
    from sidecar.runtime import stopsignals

    app = SidecarApp(config)
    app.overrides = overrides
    loop = asyncio.get_running_loop()
    # SIGTERM/SIGINT: handlers installed first thing in main (sidecar/runtime/stopsignals.py), kept
    # past the loop's close; from here on they stop the app gracefully
    stopsignals.install()
    stopsignals.on_stop(lambda: loop.call_soon_threadsafe(app.request_stop))
    if stopsignals.requested():
        app.request_stop()
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    try:
        await app.start()
    except BindError as exc:
        log.error("cannot bind", extra={"error": str(exc)})
        await app.stop()
        return EXIT_BIND
    except TlsMaterialError as exc:
        log.error("cannot load TLS material", extra={"error": str(exc)})
        await app.stop()
        return EXIT_TLS
    except Exception:  # a bug: reported, and it must not leave threads that block the exit
        log.exception("start failed")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), timeout=config.shutdown_grace_s + 5.0)
        return EXIT_INTERNAL
    try:
        if ports_file:
            write_ports_file(ports_file, app)
    except Exception:  # a bug (an OSError is reported inside): stopped, exit 1, never a hang
        log.exception("cannot write the ports file", extra={"path": ports_file[:200] if ports_file else ""})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), timeout=config.shutdown_grace_s + 5.0)
        return EXIT_INTERNAL
    try:
        await app.wait_stopped()
        log.info("shutdown requested")
    finally:
        await app.stop()  # a cancelled serve stops the app too
    return EXIT_OK
