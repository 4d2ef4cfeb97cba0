"""Composition root: config -> backends -> checks -> policy -> publishers.

The only place where the pieces are wired together; it builds, starts and stops them. The
pieces: the component registry (``sidecar.components``) and their slots
(``sidecar.runtime.slots``), the verdict pipeline (``sidecar.runtime.pipeline``), the
publishers (``sidecar.publish``), liveness (``sidecar.runtime.heartbeat``) and config reload
(``sidecar.runtime.reload``). Order at start:

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
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar import __version__
from sidecar.components import COMPONENTS, AnyEntry, BuildContext
from sidecar.config import SidecarConfig
from sidecar.core.policy import HealthPolicy
from sidecar.core.protocols import Clock, Component
from sidecar.core.values import CheckResult, Condition, ServiceVerdict
from sidecar.gpu.state_proxy import GpuStateProxy
from sidecar.publish.diagnostics import DiagnosticsService, LatestVerdict
from sidecar.publish.fanout import PublisherSet
from sidecar.publish.grpc_health import NOT_SERVING, HealthRegistry, HealthService
from sidecar.publish.grpc_server import GrpcServer, start_grpc_server
from sidecar.publish.healthz import HealthzPublisher
from sidecar.publish.http import HttpPublisher, HttpSnapshot
from sidecar.publish.metrics import CoreMetrics, RpcCollector, SectionCollectors
from sidecar.runtime.heartbeat import Heartbeat
from sidecar.runtime.pipeline import Pipeline
from sidecar.runtime.reload import Reloader
from sidecar.runtime.scenario import ScenarioFile
from sidecar.runtime.scheduler import Scheduler
from sidecar.runtime.slots import Slots
from sidecar.runtime.unix_socket import remove_stale_socket

log = logging.getLogger(__name__)


class SidecarApp:
    """The running sidecar. Its :class:`Pipeline` is the ResultSink of the scheduler and the
    components; ``components`` is the registry it builds from (tests pass their own)."""

    def __init__(
        self,
        config: SidecarConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock = time.monotonic,
        components: Sequence[AnyEntry] = COMPONENTS,
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
        collectors = SectionCollectors()
        self.registry.register(collectors)
        self._diagnostics = LatestVerdict()
        self._healthz = HealthzPublisher()
        self.publishers = PublisherSet([self.health, self.metrics, self._diagnostics, self._healthz])
        self.pipeline = Pipeline(
            policy=self.policy,
            metrics=self.metrics,
            publishers=self.publishers,
            health=self.health,
            clock=clock,
        )
        self.scheduler = Scheduler(
            self.pipeline.submit_now,
            jitter=config.jitter,
            clock=clock,
            observe_run=self.pipeline.observe_run,
            retire=self.pipeline.drop_conditions,
        )
        self.pipeline.trigger_check = self.scheduler.trigger
        self.gpu_state = GpuStateProxy()
        self.slots = Slots(
            components,
            live=self.pipeline,
            build=lambda section, cfg, reg: self.build_section(section, cfg, reg),
            scheduler=self.scheduler,
            policy=self.policy,
            collectors=collectors,
            gpu_state=self.gpu_state,
            stop_timeout=lambda: self.config.shutdown_grace_s,
        )
        self.pipeline.components = self.slots.components
        self.pipeline.listeners = self.slots.listeners
        self.heartbeat = Heartbeat(
            config.liveness,
            policy=self.policy,
            scheduler=self.scheduler,
            publishers=self.publishers,
            republish=self.publish,
            record_lag=self.metrics.loop_lag.set,
            clock=clock,
        )
        self.reloader = Reloader(self)
        self.scenario: ScenarioFile | None = None
        self.grpc: GrpcServer | None = None
        self.http: HttpPublisher | None = None
        self.grpc_port = 0
        self.grpc_tls_port = 0
        # flag overrides of the command line, re-applied on every config reload
        self.overrides: Mapping[tuple[str, ...], Any] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self.stopped = False
        # every service starts NOT_SERVING (the stock servicers start "" as SERVING)
        self.publish()

    # -- what components, tests and the CLI call --------------------------------------------
    def submit(self, results: Iterable[CheckResult]) -> None:
        """Thread-safe: record results (event-driven path)."""
        self.pipeline.submit(results)

    def publish(self) -> None:
        """The policy's verdict, to every publisher (event loop)."""
        self.pipeline.publish()

    def snapshot(self) -> tuple[Sequence[Condition], Mapping[str, ServiceVerdict]]:
        """The latest conditions and verdicts as served; safe to read from RPC threads
        (published whole by the event loop after every change)."""
        return self._diagnostics()

    def http_snapshot(self) -> HttpSnapshot:
        return self._healthz.snapshot()

    def build_section(
        self, section: str, cfg: SidecarConfig, registry: CollectorRegistry
    ) -> Component | None:
        """The component of one config section (nothing starts here), or None; every metric
        goes to ``registry``. Runs on a thread during a reload (a build reads files)."""
        config = cfg.components.get(section)
        if config is None:
            return None
        context = BuildContext(
            registry=registry,
            simulate=cfg.simulate,
            scenario=self.scenario,
            state_dir=Path(cfg.state_dir),
            engines_dir=Path(cfg.engines_dir) if cfg.engines_dir else default_engines_dir(),
            gpu_state=self.gpu_state,
            announce=self.pipeline.announce,
            configs=cfg.components,
        )
        return self.slots.entries[section].build(config, context)

    def component(self, section: str) -> Component | None:
        """The current component of ``section`` (None: the section asks for none)."""
        return self.slots.get(section)

    @property
    def components(self) -> list[Component]:
        return self.slots.components()

    def request_reload(self) -> None:
        """SIGHUP: reload soon (requests collapse; see :class:`Reloader`)."""
        self.reloader.request()

    async def reload_config(self, overrides: Mapping[tuple[str, ...], Any] | None = None) -> bool:
        """Re-read the config (SIGHUP / file change). A valid config applies; an invalid one is
        reported and the old one stays. Ports and TLS need a restart (reported). One reload
        at a time (a second waits for the first)."""
        return await self.reloader.reload(overrides)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Bind servers, start loops and components. Raises BindError / TlsMaterialError."""
        self.pipeline.bind_loop()
        cfg = self.config
        diagnostics = DiagnosticsService(
            self.snapshot, monotonic=self.clock, started_unix=self.started_unix, simulated=cfg.simulate
        )
        # servers are built, bound and started on a thread (first imports, TLS files, binds):
        # nothing blocking runs on the loop, start-up included
        self.grpc = await asyncio.to_thread(
            start_grpc_server, cfg.grpc, self.health_service, diagnostics, make_room=remove_stale_socket
        )
        self.grpc_port, self.grpc_tls_port = self.grpc.port, self.grpc.tls_port
        if cfg.http.enabled:
            self.http = HttpPublisher(
                cfg.http.host,
                cfg.http.port,
                self.registry,
                self.http_snapshot,
                max_connections=cfg.http.max_connections,
                request_timeout_s=cfg.http.request_timeout_s,
            )
            await asyncio.to_thread(self.http.start)
        if cfg.simulate:
            self.scenario = ScenarioFile(Path(cfg.scenario) if cfg.scenario else None)
            await self.scenario.start()
            self.slots.scenario = self.scenario
        for section in self.slots.sections:
            await self.slots.install(section, cfg)
        for section in self.slots.sections:
            await self.slots.start(section)
        self._tasks.append(asyncio.create_task(self.heartbeat.run(), name="heartbeat"))
        self.heartbeat.start_watchdog()
        if cfg.config_file:
            self._tasks.append(await self.reloader.start_watch())
        for task in self._tasks:
            task.add_done_callback(_report_task_end)
        self.policy.set_started(True)
        self.publish()
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

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Graceful: NOT_SERVING everywhere, watchers told and ended, drain, stop components."""
        if self.stopped:
            return
        self.stopped = True
        self.heartbeat.stop_watchdog()
        self.policy.set_shutting_down()
        self.publish()
        self.health.set_statuses({s: NOT_SERVING for s in self.health.snapshot()})
        self.health.close()  # every Watch stream: NOT_SERVING, then ended with OK
        grace = self.config.shutdown_grace_s
        await asyncio.to_thread(self.health_service.sender.shutdown, grace)
        if self.reloader.task is not None:
            self._tasks.append(self.reloader.task)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            # a task that raised was reported by _report_task_end; it must not block the stop
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.grpc is not None:
            stopped = self.grpc.server.stop(grace)
            await asyncio.to_thread(stopped.wait, grace + 1.0)
        async with self.reloader.lock:  # a reload called directly finishes (or cleans up) first
            pass
        for section in reversed(self.slots.sections):
            await self.slots.stop(section)
        await self.scheduler.stop()
        if self.scenario is not None:
            await self.scenario.stop()
        if self.http is not None:
            self.http.stop()
        log.info("sidecar stopped")


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
    return Path(__file__).resolve().parent.parent / "engines"
