"""The GPU component: backend + Xid listener + sticky latches + checks + metrics.

Wiring (app.py)::

    cfg = parse_gpu_config(root.sub("gpu"))
    gpu = GpuComponent(cfg, simulate=args.simulate, scenario=scenario, registry=registry,
                       state_dir=state_dir)
    # gpu.checks() -> [GpuPollCheck "gpu", InforomCheck "gpu/inforom"]; await gpu.start(sink)
    # gpu is also the GpuStateView handed to the canary and the workload probe.

Without ``simulate`` the real NVML backend is used; with no driver / no GPU it still
constructs and starts, and reports ``nvml`` failing (``NvmlUnavailable`` / ``DriverNotLoaded``)
so readiness is NOT_SERVING with the reason: it never falls back to simulation silently.

This module is the I/O edge: it wires the backend (through the NVML watchdog), the Xid listener,
the latch store, the pure :class:`sidecar.gpu.tracker.GpuTracker` (every fault rule lives
there), the scheduler's checks and the metrics. It reads the time only through the injected
``clock`` (monotonic) and ``wall`` clocks and hands it to the tracker.

Fault policy (``../shared/reference/gpu-health-anchors.md`` (b)): see the tracker and the
condition builders in :mod:`sidecar.gpu.conditions` and its siblings. Sticky latches (fatal Xids,
uncontained ECC, remap failure, lost GPU) are persisted in ``state_dir/<state_file>`` and clear
only on evidence of a reset: the node's boot id changed, a volatile ECC counter went down, the
recovery action went from a reset / reboot class back to none, or (simulated) the ``reset``
counter changed — and a reset clears only the latches set at or before the sample that showed
the pre-reset baseline (order of evidence, kept across restarts). A latch store that cannot be
trusted (corrupt, unreadable, unwritable) gates readiness as ``gpu/state``.

A GPU that leaves the inventory takes its conditions, ``gpu/<uuid>`` service and metric series
with it, unless it holds a fatal latch (then it stays reported from its latches); with real
NVML a GPU that is no longer enumerated is latched lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.core.protocols import Check, Clock, ResultSink
from sidecar.core.values import CheckResult
from sidecar.gpu.backend import (
    EventType,
    GpuBackend,
    GpuEvent,
    GpuGoneError,
    GpuInfo,
    GpuLostError,
    GpuSample,
    NvmlError,
    NvmlHungError,
    NvmlUnavailableError,
    ResetRequiredError,
)
from sidecar.gpu.checks import GpuPollCheck, InforomCheck
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.effects import FoldEffects
from sidecar.gpu.env_conditions import inforom_result
from sidecar.gpu.latches import LatchStore, StoreProblem, read_boot_id
from sidecar.gpu.listener import XidListener
from sidecar.gpu.metrics import GpuMetrics
from sidecar.gpu.process_conditions import inventory_result, nvml_failed, state_file_result
from sidecar.gpu.real import RealNvmlBackend
from sidecar.gpu.session import NvmlSession
from sidecar.gpu.simulated import SimulatedBackend
from sidecar.gpu.tracker import GpuTracker
from sidecar.gpu.xid_conditions import XidRecord
from sidecar.runtime.scenario import ScenarioFile

log = logging.getLogger(__name__)


class GpuComponent:
    """The GPU layer (see module doc). Implements ``Component`` and ``GpuStateView``."""

    name = "gpu"

    def __init__(
        self,
        config: GpuConfig,
        *,
        simulate: bool,
        scenario: ScenarioFile | None,
        registry: CollectorRegistry,
        state_dir: Path,
        backend: GpuBackend | None = None,
        boot_id: str | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.config = config
        self.simulate = simulate
        self._clock = clock
        self._wall = wall
        if backend is None:
            backend = SimulatedBackend(scenario, wall=wall) if simulate else RealNvmlBackend(wall=wall)
        self.backend: GpuBackend = backend
        self.metrics = GpuMetrics(registry)
        # with real NVML a container's GPUs are fixed: one no longer enumerated is lost
        self.tracker = GpuTracker(config, lose_vanished=not simulate)
        self.table = self.tracker.table
        self.latches = LatchStore(
            state_dir / config.state_file,
            boot_id=read_boot_id() if boot_id is None else boot_id,
            wall=wall,
        )
        self.latches.load()
        if self.latches.rebooted():  # a reboot is evidence: NVML state re-derives the rest
            for uuid, cleared in self.latches.all_latches().items():
                self.latches.clear(uuid)
                log.info(
                    "GPU latches cleared: node rebooted since they were set",
                    extra={"uuid": uuid, "reasons": [x.reason for x in cleared]},
                )
        self._session = NvmlSession(
            backend,
            self.metrics,
            timeout_s=config.nvml_call_timeout_s,
            clock=clock,
            wall=wall,
            on_unstuck=self._spawn_threadsafe,
            log=log,
        )
        self._listener = XidListener(
            backend,
            self._on_event,
            on_error=self._on_event_error,
            wait_timeout_s=config.event_wait_timeout_s,
        )
        self._lock = threading.RLock()  # the tracker's state: event loop + listener thread
        self._registered = False
        self._sink: ResultSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._eval_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresh_pending = False
        self._effects = FoldEffects(self.latches, self.metrics, lock=self._lock, log=log)
        self._events_handled = 0
        self._stopped = False
        self._checks: list[Check] = [GpuPollCheck(self), InforomCheck(self)]
        if scenario is not None and simulate:
            scenario.subscribe(self._on_scenario)

    # -- Component ----------------------------------------------------------------------------

    def checks(self) -> Sequence[Check]:
        return list(self._checks)

    async def start(self, sink: ResultSink) -> None:
        """Returns at once; the first sample (NVML init, enumeration, events) runs in the
        background and its results are submitted when ready."""
        self._sink = sink
        self._effects.sink = sink
        self._loop = asyncio.get_running_loop()
        self._eval_lock = asyncio.Lock()
        self._stopped = False
        self._spawn(self.refresh(submit=True))

    async def stop(self) -> None:
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await asyncio.to_thread(self._listener.stop)  # before close: it waits on the event set
        self.backend.close()  # also releases a simulated hang
        self._session.close()
        await asyncio.to_thread(self.latches.save)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- GpuStateView -------------------------------------------------------------------------

    def exclusive_process(self) -> bool:
        with self._lock:
            return self.tracker.exclusive_process()

    def busy(self) -> bool:
        with self._lock:
            return self.tracker.busy()

    def reset_generation(self) -> int:
        return self.tracker.reset_generation

    def gpu_fault(self) -> bool:
        return self._effects.gpu_fault()

    def compute_capability(self) -> str | None:
        """Compute capability of the first visible GPU ("9.0"), or None before the first poll."""
        with self._lock:
            return self.tracker.compute_capability()

    def free_memory_mib(self) -> float | None:
        """The smallest free memory (MiB) among this pod's GPUs at the last poll, or None."""
        with self._lock:
            return self.tracker.free_memory_mib()

    # -- evaluation ---------------------------------------------------------------------------

    async def refresh(self, *, submit: bool) -> list[CheckResult]:
        """Sample every GPU and return (and with ``submit`` also push) all GPU results."""
        if self._eval_lock is None:
            self._eval_lock = asyncio.Lock()
        async with self._eval_lock:
            results = await self._evaluate()
        self._effects.record(results)
        if submit and self._sink is not None and not self._stopped:
            self._sink.submit(results)
        return results

    async def _evaluate(self) -> list[CheckResult]:
        session = self._session
        listed = await session.inventory()
        if isinstance(listed, CheckResult):
            return [listed]
        enumerated, infos = listed
        with self._lock:
            self.tracker.enumerate(infos)
            for info in infos:
                if not info.lost:
                    self.metrics.gpu_info(info, session.system, self.backend.kind)

        if self.config.events and not self._registered:
            await self._register_events([i.uuid for i in infos if not i.lost])

        results: list[CheckResult] = []
        hung: NvmlHungError | None = None
        gone: set[str] = set()
        for info in infos:
            if info.lost:
                results.extend(self._fold_error(info, GpuLostError("GPU lost at enumeration"), enumerated))
                continue
            uuid = info.uuid
            taken = self._wall()  # before the call: an Xid latched during it may be newer
            try:
                sample = await session.sample(uuid)
            except NvmlHungError as exc:
                hung = hung or NvmlHungError(exc.text, uuid=uuid)
                continue
            except GpuGoneError:
                gone.add(uuid)  # removed from the (simulated) inventory meanwhile: not a fault
                continue
            except (GpuLostError, ResetRequiredError) as exc:
                results.extend(self._fold_error(info, exc, taken))
                continue
            except NvmlUnavailableError as exc:
                return [session.unavailable(exc)]
            except NvmlError as exc:
                results.append(nvml_failed(exc.reason, f"{uuid}: {exc.text}", hung=True, uuid=uuid))
                continue
            results.extend(self._fold(sample, taken))

        results.append(session.status(hung))
        infos = [i for i in infos if i.uuid not in gone]
        with self._lock:
            self.tracker.current = [i.uuid for i in infos]
        results.extend(self._absent({i.uuid for i in infos}, enumerated))
        results.append(inventory_result(infos, self.config.expected_uuids, self.config.expected_count))
        problem = await asyncio.to_thread(self._persist)
        results.append(state_file_result(problem))
        return results

    def _persist(self) -> StoreProblem | None:
        """Save the latches and say whether the store can be trusted (worker thread)."""
        self.latches.save()
        return self.latches.health()

    # -- folding (the tracker decides, the effects carry it out) ------------------------------

    def _fold(self, sample: GpuSample, taken: float) -> list[CheckResult]:
        """Fold one sample, taken (its NVML calls started) at wall time ``taken``."""
        uuid = sample.info.uuid
        with self._lock:
            fold = self.tracker.fold(sample, taken=taken, now=self._clock(), latches=self.latches.view(uuid))
            self.metrics.sample(sample)
            self._effects.apply(fold)
        self._effects.trigger(fold.triggers)
        return fold.results

    def _fold_error(self, info: GpuInfo, exc: NvmlError, taken: float) -> list[CheckResult]:
        with self._lock:
            fold = self.tracker.fold_error(
                info, exc, taken=taken, now=self._clock(), latches=self.latches.view(info.uuid)
            )
            self._effects.apply(fold)
        return fold.results

    def _absent(self, present: set[str], enumerated: float) -> list[CheckResult]:
        """GPUs no longer enumerated (see :func:`sidecar.gpu.tracker_events.absent_folds`)."""
        out: list[CheckResult] = []
        with self._lock:
            folds = self.tracker.absent(
                present, enumerated=enumerated, now=self._clock(), latches=self.latches.snapshot()
            )
            for fold in folds:
                self._effects.apply(fold)
                out.extend(fold.results)
        return out

    async def _register_events(self, uuids: list[str]) -> None:
        regs, registered = await self._session.register_events(uuids)
        with self._lock:
            self.tracker.registered(regs)
        if registered:
            self._registered = True
            self._listener.start()

    # -- events (listener thread) -------------------------------------------------------------

    def _on_event(self, ev: GpuEvent) -> None:
        try:
            self._handle_event(ev)
        finally:
            self._events_handled += 1

    def _handle_event(self, ev: GpuEvent) -> None:
        sink = self._sink
        with self._lock:
            uuid = self.tracker.resolve(ev.uuid)
            if ev.event_type & EventType.DOUBLE_BIT_ECC:
                self.metrics.ecc_events.labels(uuid=uuid, type="double_bit").inc()
            if ev.event_type & EventType.SINGLE_BIT_ECC:
                self.metrics.ecc_events.labels(uuid=uuid, type="single_bit").inc()
            fold = self.tracker.event(
                ev, now=self._clock(), wall=self._wall(), latches=self.latches.view(uuid)
            )
            self._effects.apply(fold)
        if sink is None:
            return
        if fold.results:
            self.latches.save()  # this thread, not the loop; the store's lock is not held across it
            self._effects.record(fold.results)
            sink.submit(fold.results)
        for name in fold.triggers:
            sink.trigger(name)

    def _on_event_error(self, exc: NvmlError) -> None:
        if isinstance(exc, GpuLostError):
            self._spawn_threadsafe()

    def _spawn_threadsafe(self) -> None:
        """Ask the event loop for an immediate refresh (from any thread)."""
        loop = self._loop
        if loop is None or self._stopped:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._request_refresh)

    # -- scenario changes (simulate only, event loop thread) ----------------------------------

    def _on_scenario(self, doc: Any) -> None:
        if self._loop is None or self._stopped:
            return
        self._request_refresh()

    def _request_refresh(self) -> None:
        if self._refresh_pending:
            return
        self._refresh_pending = True
        self._spawn(self._scenario_refresh())

    async def _scenario_refresh(self) -> None:
        # let the listener handle the events this change queued, so an Xid that accompanies
        # an ECC increase in the same change classifies it (bounded wait)
        queued = getattr(self.backend, "events_queued", None)
        if self._listener.alive and queued is not None:
            for _ in range(100):  # at most ~0.2 s
                if self._events_handled >= queued():
                    break
                await asyncio.sleep(0.002)
        self._refresh_pending = False
        await self.refresh(submit=True)

    # -- InfoROM ------------------------------------------------------------------------------

    async def check_inforom(self) -> list[CheckResult]:
        results: list[CheckResult] = []
        with self._lock:
            states = [st for st in self.tracker.live() if not st.info.lost]
        for st in states:
            uuid = st.info.uuid
            try:
                reading = await self._session.validate_inforom(uuid)
            except NvmlError:
                continue  # the poll check reports NVML problems
            results.append(inforom_result(st.ref, reading))
        return results

    # -- introspection (tests, diagnostics) ---------------------------------------------------

    @property
    def listener_alive(self) -> bool:
        return self._listener.alive

    def gpu_uuids(self) -> list[str]:
        with self._lock:
            return list(self.tracker.current)

    def identity(self) -> dict[str, str]:
        """GPU model and driver / CUDA driver versions (the replica-consistency key); empty
        strings until NVML answered."""
        with self._lock:
            names = sorted({st.info.name for st in self.tracker.live()})
        system = self._session.system
        cuda = system.cuda_driver_version if system is not None else 0
        return {
            "gpu_model": "+".join(names),
            "driver_version": system.driver_version if system is not None else "",
            "cuda_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else "",
        }

    def latest_samples(self) -> dict[str, tuple[float, GpuSample]]:
        """uuid -> (wall time, sample) of the latest sample of each GPU in the inventory (no
        driver call: the trends component folds these)."""
        with self._lock:
            return {
                st.info.uuid: (st.last_taken, st.last) for st in self.tracker.live() if st.last is not None
            }

    def recent_xids(self) -> dict[str, list[XidRecord]]:
        """Xids seen per GPU since the last observed reset (wall time of receipt included)."""
        with self._lock:
            return {u: list(st.recent) for u, st in self.tracker.tracks.items()}
