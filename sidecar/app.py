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
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.checks.base import Component, TransitionListener
from sidecar.config import SidecarConfig, load_config
from sidecar.configfields import ConfigError
from sidecar.errors import BindError, TlsMaterialError
from sidecar.model import SERVICE_OVERALL, CheckResult, CheckStatus, Transition
from sidecar.policy import HealthPolicy
from sidecar.proto import diagnostics_pb2_grpc
from sidecar.publish.diagnostics import DiagnosticsService
from sidecar.publish.grpc_health import (
    NOT_SERVING,
    SERVICE_NAME,
    HealthRegistry,
    HealthService,
    RpcExecutor,
    to_wire_statuses,
)
from sidecar.publish.http import HttpPublisher, HttpSnapshot, healthz_document
from sidecar.publish.log import configure_logging
from sidecar.publish.tls import TlsCredentialsWatcher
from sidecar.scenario import ScenarioFile
from sidecar.scheduler import Scheduler

log = logging.getLogger(__name__)

GRPC_SERVER_OPTIONS: list[tuple[str, Any]] = [
    # A second sidecar (or anything else) on the same port must be an error, not a silent
    # share of the port.
    ("grpc.so_reuseport", 0),
    # Health messages are tiny; a huge request is refused by the transport.
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    # Find dead Watch peers and idle connections, so hostile clients cannot hold resources.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_connection_idle_ms", 300_000),
]


class _RpcCollector(Collector):
    """Exports the hot-path plain counters of the health service."""

    def __init__(self, service: HealthService) -> None:
        self._service = service

    def collect(self) -> Iterable[Any]:
        calls = CounterMetricFamily(
            "trt_health_grpc_requests",
            "grpc.health.v1 RPCs handled, by method and status code",
            labels=["method", "code"],
        )
        for (method, code), n in sorted(self._service.stats.calls.items()):
            calls.add_metric([method, code], n)
        yield calls
        yield GaugeMetricFamily(
            "trt_health_watch_streams",
            "Open Watch streams",
            value=self._service.stats.watchers_open,
        )
        yield CounterMetricFamily(
            "trt_health_watch_rejected",
            "Watch streams refused with RESOURCE_EXHAUSTED (cap reached)",
            value=self._service.stats.watch_rejected,
        )
        yield CounterMetricFamily(
            "trt_health_watch_stuck_cancelled",
            "Watch streams cancelled because a send stayed blocked (client stopped reading)",
            value=self._service.stats.watch_stuck_cancelled,
        )


# Config sections with a component, in start order (the GPU first: the others ask it).
COMPONENT_SECTIONS = ("gpu", "canary", "engines", "workload")
LISTENER_SECTIONS = ("events",)
ALL_SECTIONS = COMPONENT_SECTIONS + LISTENER_SECTIONS


class _DelegatingCollector(Collector):
    """Forwards to each section's registry of component metrics (replaced on reload, so a
    rebuilt component registers its metrics again without clashing with the old ones)."""

    def __init__(self) -> None:
        self.targets: dict[str, CollectorRegistry] = {}

    def collect(self) -> Iterable[Any]:
        for registry in list(self.targets.values()):
            yield from registry.collect()


class GpuStateProxy:
    """The GpuStateView other components hold: forwards to the current GPU component, so a
    reload that replaces it does not leave them asking a stopped one. Without a GPU
    component it answers "no fault, not busy, nothing known"."""

    def __init__(self) -> None:
        self.target: Any = None
        self._generation_base = 0

    def swap(self, target: Any) -> None:
        # keep reset_generation() unchanged across the swap: a new component is not a reset
        before = self.reset_generation()
        self.target = target
        self._generation_base = before - (target.reset_generation() if target is not None else 0)

    def exclusive_process(self) -> bool:
        return bool(self.target is not None and self.target.exclusive_process())

    def busy(self) -> bool:
        return bool(self.target is not None and self.target.busy())

    def reset_generation(self) -> int:
        inner = int(self.target.reset_generation()) if self.target is not None else 0
        return self._generation_base + inner

    def gpu_fault(self) -> bool:
        return bool(self.target is not None and self.target.gpu_fault())

    def compute_capability(self) -> str | None:
        fn = getattr(self.target, "compute_capability", None)
        return fn() if fn is not None else None

    def free_memory_mib(self) -> float | None:
        fn = getattr(self.target, "free_memory_mib", None)
        return fn() if fn is not None else None


class CoreMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.condition_ok = Gauge(
            "trt_health_condition_ok",
            "Established state per condition: 1 healthy, 0 unhealthy, -1 not yet established",
            ["condition", "severity"],
            registry=registry,
        )
        self.condition_gating = Gauge(
            "trt_health_condition_gating",
            "1 while the condition holds its services NOT_SERVING",
            ["condition"],
            registry=registry,
        )
        self.service_serving = Gauge(
            "trt_health_service_serving",
            "1 when the grpc.health.v1 service is SERVING",
            ["service"],
            registry=registry,
        )
        self.transitions = Counter(
            "trt_health_transitions",
            "Changes of a condition's established state",
            ["condition", "to", "reason"],
            registry=registry,
        )
        self.check_duration = Histogram(
            "trt_health_check_duration_seconds",
            "Wall time of one check run",
            ["check"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 120),
            registry=registry,
        )
        self.check_runs = Counter(
            "trt_health_check_runs",
            "Check runs by outcome (ok, fail, timeout, inflight, late, error)",
            ["check", "outcome"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "trt_health_config_reloads",
            "Config reload attempts by result (applied, rejected, unchanged)",
            ["result"],
            registry=registry,
        )
        self.loop_lag = Gauge(
            "trt_health_event_loop_lag_seconds",
            "How late the last heartbeat woke up (event loop responsiveness)",
            registry=registry,
        )
        self.build = Gauge("trt_health_build_info", "Version of the sidecar", ["version"], registry=registry)
        self.build.labels(__version__).set(1)


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
        self.registry.register(_RpcCollector(self.health_service))
        self._components_registry = _DelegatingCollector()
        self.registry.register(self._components_registry)
        self.scheduler = Scheduler(
            self._submit_now, jitter=config.jitter, clock=clock, observe_run=self._observe_run
        )
        self._slots: dict[str, Any] = {}
        self.gpu_state = GpuStateProxy()
        self.scenario: ScenarioFile | None = None
        self.server: grpc.Server | None = None
        self.http: HttpPublisher | None = None
        self.grpc_port = 0
        self.grpc_tls_port = 0
        self._tls: TlsCredentialsWatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._liveness: tuple[bool, str] = (True, "")
        # flag overrides of the command line, re-applied on every config reload
        self.overrides: Mapping[tuple[str, ...], Any] = {}
        self._http_snapshot = HttpSnapshot()
        self._diag_snapshot: tuple[list[Any], dict[str, Any]] = ([], {})
        self._ok_series: dict[str, str] = {}  # condition -> severity label of its ok series
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._stopped = False
        self._config_stamp: tuple[int, int] | None = None
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
        self._publish()

    def _observe_run(self, check: str, outcome: str, seconds: float) -> None:
        self.policy.settle(check)
        self.metrics.check_runs.labels(check, outcome).inc()
        if outcome in ("ok", "fail", "error", "late"):
            self.metrics.check_duration.labels(check).observe(seconds)

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
        self.metrics.transitions.labels(t.condition, to, t.reason or "").inc()
        for listener in self.listeners:
            try:
                listener.on_transition(t)
            except Exception:
                log.exception("transition listener failed")

    def _publish(self) -> None:
        verdicts = self.policy.verdicts()
        serving = {name: v.serving for name, v in verdicts.items()}
        self.health.set_statuses(to_wire_statuses(serving))
        for name, ok in serving.items():
            self.metrics.service_serving.labels(name).set(1 if ok else 0)
        conditions = self.policy.conditions()
        checks: dict[str, Any] = {}
        for c in conditions:
            severity = c.last.severity.name.lower()
            previous = self._ok_series.get(c.name)
            if previous is not None and previous != severity:
                # one series per condition: drop the one labelled with the old severity
                self.metrics.condition_ok.remove(c.name, previous)
            self._ok_series[c.name] = severity
            self.metrics.condition_ok.labels(c.name, severity).set(
                -1 if c.healthy is None else (1 if c.healthy else 0)
            )
            self.metrics.condition_gating.labels(c.name).set(1 if c.gating else 0)
            entry: dict[str, Any] = {
                "ok": c.last.status is CheckStatus.OK,
                "status": c.last.status.value,
                "established": None if c.healthy is None else c.healthy,
                "gating": c.gating,
                "severity": c.last.severity.name.lower(),
                "reason": c.last.reason,
                "message": c.last.message,
            }
            if c.last.labels:
                entry["labels"] = dict(c.last.labels)
            if c.last.value is not None:
                entry["value"] = c.last.value
            checks[c.name] = entry
        services = {
            name: {"status": "SERVING" if v.serving else "NOT_SERVING", "reasons": list(v.reasons)}
            for name, v in sorted(verdicts.items())
        }
        ready = serving.get(SERVICE_OVERALL, False)
        self._diag_snapshot = (conditions, verdicts)
        self._http_snapshot = HttpSnapshot(
            ready=ready,
            live=serving.get("liveness", False),
            body=healthz_document("trt-health-sidecar", ready, services, checks),
            services=serving,
        )

    def snapshot(self) -> tuple[list[Any], dict[str, Any]]:
        """The latest conditions and verdicts; safe to read from RPC threads (published whole
        by the event loop after every change)."""
        return self._diag_snapshot

    def http_snapshot(self) -> HttpSnapshot:
        return self._http_snapshot

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
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="heartbeat"))
        if cfg.config_file:
            self._config_stamp = self._stat_config()
            self._tasks.append(asyncio.create_task(self._watch_config(), name="config-watch"))
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
        cfg = self.config.grpc
        # grpcio's sync server: Check/List answer on a small pool (no Watch ever holds one of
        # its threads, see publish/grpc_health.py); measured faster per core than grpc.aio.
        # Under a burst of thousands of Watch calls a probe's Check neither waits in Watch's
        # queue of unrequested calls (registered methods: one queue each in grpc-core) nor
        # behind their registrations in the pool (RpcExecutor): BENCHMARKS.md section 5b.
        pool = RpcExecutor(cfg.threads, thread_name_prefix="grpc-rpc")
        pool.background = self.health_service.watch_behavior
        server = grpc.server(
            pool,
            options=GRPC_SERVER_OPTIONS,
        )
        self.health_service.add_to_server(server)
        diagnostics_pb2_grpc.add_DiagnosticsServicer_to_server(
            DiagnosticsService(
                self.snapshot,
                monotonic=self.clock,
                started_unix=self.started_unix,
                simulated=self.config.simulate,
            ),
            server,
        )
        if cfg.reflection:
            from grpc_reflection.v1alpha import reflection

            reflection.enable_server_reflection(
                (SERVICE_NAME, "trt_health.diagnostics.v1.Diagnostics", reflection.SERVICE_NAME),
                server,
            )
        address = f"{cfg.host}:{cfg.port}"
        try:
            self.grpc_port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise BindError(f"grpc {address}: {exc}") from exc
        if self.grpc_port == 0:
            raise BindError(f"grpc {address}: cannot bind")
        if cfg.unix_socket:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(cfg.unix_socket)
            try:
                server.add_insecure_port(f"unix:{cfg.unix_socket}")
            except RuntimeError as exc:
                raise BindError(f"grpc unix:{cfg.unix_socket}: {exc}") from exc
        if cfg.tls is not None:
            self._tls = TlsCredentialsWatcher(
                cert_file=cfg.tls.cert_file,
                key_file=cfg.tls.key_file,
                client_ca_file=cfg.tls.client_ca_file,
                require_client_cert=cfg.tls.require_client_cert,
            )
            creds = self._tls.server_credentials()  # raises TlsMaterialError
            tls_address = f"{cfg.host}:{cfg.tls.port}"
            try:
                self.grpc_tls_port = server.add_secure_port(tls_address, creds)
            except RuntimeError as exc:
                raise BindError(f"grpc tls {tls_address}: {exc}") from exc
            if self.grpc_tls_port == 0:
                raise BindError(f"grpc tls {tls_address}: cannot bind")
        server.start()
        self.server = server

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
                sec, registry=registry, gpu_state=gpu_state, engines_dir=engines_dir, **common
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
        self._slots[section] = obj
        self._components_registry.targets[section] = registry
        if section == "gpu":
            self.gpu_state.swap(obj)

    async def _start_slot(self, section: str, *, known: frozenset[str] | None = None) -> None:
        obj = self._slots.get(section)
        if obj is None:
            return
        if section in COMPONENT_SECTIONS:
            checks = obj.checks()
            # readiness waits for a check's first result, except across a reload for checks
            # that already reported (their conditions stay until new results replace them)
            self.policy.expect(c.name for c in checks if known is None or c.name not in known)
            self.scheduler.add(checks)
            await obj.start(self)
        else:
            start = getattr(obj, "start", None)
            if start is not None:
                await start()

    async def _stop_slot(self, section: str) -> None:
        obj = self._slots.get(section)
        if obj is None:
            return
        try:
            if section in COMPONENT_SECTIONS:
                await self.scheduler.remove(c.name for c in obj.checks())
            stop = getattr(obj, "stop", None)
            if stop is not None:
                await asyncio.wait_for(stop(), timeout=self.config.shutdown_grace_s)
        except Exception:
            log.exception("component stop failed", extra={"component": section})

    async def _restart_sections(self, new: SidecarConfig, sections: list[str]) -> None:
        """Replace the components of the changed sections, one by one.

        The old component stops first (the GPU component persists its latches, which the new
        one re-reads), then the new one is built on its own metrics registry and started.
        If building fails, the old config's component is built and started again and the error
        propagates (the reload is rejected). Conditions are kept across the swap, so a fatal
        state stays fatal and a healthy one does not flap; conditions the new component no
        longer reports are dropped once it had time to report them.
        """
        known = frozenset(self.scheduler.loops)
        swap_at = self.clock()
        for section in sections:
            await self._stop_slot(section)
            try:
                self._install(section, new)
            except Exception:
                self._install(section, self.config)
                await self._start_slot(section, known=known)
                raise
            await self._start_slot(section, known=known)
        # every check runs at once when added; its first results come within its (first) timeout
        grace = max(
            (
                getattr(c, "first_timeout_s", None) or c.timeout_s
                for comp in self.components
                for c in comp.checks()
            ),
            default=0.0,
        )
        asyncio.get_running_loop().call_later(grace + 1.0, self._forget_stale, swap_at)

    async def _heartbeat(self) -> None:
        """Liveness: the loop wakes on time and every check loop keeps beating."""
        interval = self.config.liveness.heartbeat_interval_s
        max_lag = self.config.liveness.max_loop_lag_s
        while True:
            before = self.clock()
            await asyncio.sleep(interval)
            now = self.clock()
            lag = max(0.0, now - before - interval)
            self.metrics.loop_lag.set(lag)
            stalled = self.scheduler.stalled(now, lambda c: c.timeout_s + c.interval_s * 1.6 + max_lag + 1.0)
            if lag > max_lag:
                alive, reason = False, f"EventLoopLag: {lag:.1f}s"
            elif stalled:
                alive, reason = False, "SchedulerStalled: " + ", ".join(sorted(stalled))
            else:
                alive, reason = True, ""
            if (alive, reason) != self._liveness:
                self._liveness = (alive, reason)
                self.policy.set_liveness(alive, reason)
                self._publish()

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

    async def reload_config(self, overrides: Mapping[tuple[str, ...], Any] | None = None) -> bool:
        """Re-read the config (SIGHUP / file change). A valid config applies; an invalid one is
        reported and the old one stays. Ports and TLS need a restart (reported)."""
        try:
            new = load_config(
                config_file=self.config.config_file or None, overrides=overrides or self.overrides
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
        self.policy.reconfigure(new.policy)
        configure_logging(new.log_level, new.log_format)
        self.scheduler._jitter = new.jitter
        changed = [s for s in ALL_SECTIONS if new.components.get(s) != old.components.get(s)]
        if changed:
            try:
                await self._restart_sections(new, changed)
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
        stale = [c.name for c in self.policy.conditions() if c.last_result_at < since]
        if stale:
            log.info("conditions no longer reported after reload", extra={"conditions": stale})
            self.policy.forget(stale)
            for name in stale:  # their metric series go too
                severity = self._ok_series.pop(name, None)
                if severity is not None:
                    self.metrics.condition_ok.remove(name, severity)
                    self.metrics.condition_gating.remove(name)
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
        self.policy.set_shutting_down()
        self._publish()
        self.health.set_statuses({s: NOT_SERVING for s in self.health.snapshot()})
        self.health.close()  # every Watch stream: NOT_SERVING, then ended with OK
        grace = self.config.shutdown_grace_s
        await asyncio.to_thread(self.health_service.sender.shutdown, grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.server is not None:
            stopped = self.server.stop(grace)
            await asyncio.to_thread(stopped.wait, grace + 1.0)
        for section in reversed(ALL_SECTIONS):
            await self._stop_slot(section)
        await self.scheduler.stop()
        if self.scenario is not None:
            await self.scenario.stop()
        if self.http is not None:
            self.http.stop()
        log.info("sidecar stopped")


def default_engines_dir() -> Path:
    """engines/ of the source tree (demo canary model), or of the installed image."""
    here = Path(__file__).resolve().parent.parent / "engines"
    return here


async def serve(config: SidecarConfig, overrides: Mapping[tuple[str, ...], Any]) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    from sidecar.errors import EXIT_BIND, EXIT_OK, EXIT_TLS

    app = SidecarApp(config)
    app.overrides = overrides
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, app.request_stop)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(app.reload_config()))
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
    await app.wait_stopped()
    log.info("shutdown requested")
    await app.stop()
    return EXIT_OK
