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

Fault policy (``../shared/reference/gpu-health-anchors.md`` (b)): see the condition builders in
:mod:`sidecar.gpu.conditions` and :mod:`sidecar.gpu.xid_conditions`. Sticky latches (fatal Xids,
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
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.core.protocols import Check, ConditionRetirer, ResultSink
from sidecar.core.values import SERVICE_GPU, CheckResult, Severity
from sidecar.gpu.backend import (
    CLOCKS_HW_MASK,
    MIG_ID_ANY,
    REBOOT_CLASS_ACTIONS,
    RESET_CLASS_ACTIONS,
    UNSUPPORTED,
    ComputeMode,
    EccCounters,
    EventRegistration,
    EventType,
    GpuBackend,
    GpuEvent,
    GpuGoneError,
    GpuInfo,
    GpuLostError,
    GpuSample,
    MemoryInfo,
    NvmlError,
    NvmlHungError,
    NvmlUnavailableError,
    RemappedRows,
    ResetRequiredError,
    SystemInfo,
    value_or_none,
)
from sidecar.gpu.caller import NvmlCaller
from sidecar.gpu.conditions import (
    GPU_GATES,
    GpuPollCheck,
    GpuRef,
    InforomCheck,
    compute_mode_result,
    ecc_result,
    events_result,
    inforom_result,
    inventory_result,
    lost_result,
    memory_result,
    nvml_failed,
    nvml_ok,
    pcie_result,
    recovery_action_result,
    remap_result,
    state_file_result,
    thermal_result,
)
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.latches import Latch, LatchStore, StoreProblem, read_boot_id
from sidecar.gpu.listener import XidListener
from sidecar.gpu.metrics import GpuMetrics
from sidecar.gpu.real import RealNvmlBackend
from sidecar.gpu.simulated import SimulatedBackend
from sidecar.gpu.xid import (
    XID_ECC_CONTAINED,
    XID_ECC_UNCONTAINED,
    XID_RECOVERY_ACTION_CHANGED,
    XidClass,
    XidTable,
    xid_reason,
)
from sidecar.gpu.xid_conditions import XidRecord, xid_result
from sidecar.runtime.scenario import ScenarioFile

log = logging.getLogger(__name__)

CANARY_CHECK = "canary"
POLL_CHECK = "gpu"


@dataclass(slots=True)
class _GpuState:
    """What the component remembers of one GPU between samples (in memory only)."""

    info: GpuInfo
    ref: GpuRef
    last: GpuSample | None = None
    last_taken: float = 0.0  # wall time the last sample's NVML calls started
    recent: deque[XidRecord] = field(default_factory=lambda: deque(maxlen=256))
    ecc_contained: bool = False
    corrected_hist: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    replay_hist: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    hw_slowdown_since: float | None = None
    sampled: bool = False
    reset_required: str | None = None
    registration: EventRegistration | None = None


def _increase(hist: deque[tuple[float, int]], now: float, value: int, window_s: float) -> int:
    """Append (now, value) and return value minus the smallest value within the window."""
    hist.append((now, value))
    while hist and now - hist[0][0] > window_s:
        hist.popleft()
    return value - min(v for _, v in hist)


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
    ) -> None:
        self.config = config
        self.simulate = simulate
        if backend is None:
            backend = SimulatedBackend(scenario) if simulate else RealNvmlBackend()
        self.backend: GpuBackend = backend
        self.metrics = GpuMetrics(registry)
        self.table = XidTable(config.xid_overrides)
        self.latches = LatchStore(
            state_dir / config.state_file,
            boot_id=read_boot_id() if boot_id is None else boot_id,
        )
        self.latches.load()
        if self.latches.rebooted():  # a reboot is evidence: NVML state re-derives the rest
            for uuid, cleared in self.latches.all_latches().items():
                self.latches.clear(uuid)
                log.info(
                    "GPU latches cleared: node rebooted since they were set",
                    extra={"uuid": uuid, "reasons": [x.reason for x in cleared]},
                )
        self._caller = NvmlCaller(
            observe=self.metrics.observe_call,
            on_hung=lambda op: self.metrics.nvml_hung.labels(op=op).inc(),
            on_unstuck=self._spawn_threadsafe,
        )
        self._listener = XidListener(
            backend,
            self._on_event,
            on_error=self._on_event_error,
            wait_timeout_s=config.event_wait_timeout_s,
        )
        self._lock = threading.RLock()
        self._gpus: dict[str, _GpuState] = {}
        self._current: list[str] = []
        self._system: SystemInfo | None = None
        self._opened = False
        self._registered = False
        self._sink: ResultSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._eval_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refresh_pending = False
        self._failing: dict[str, bool] = {}
        self._absent_reported: set[str] = set()  # not enumerated, reported from their latches
        self._reset_generation = 0
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
        self._caller.close()
        await asyncio.to_thread(self.latches.save)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- GpuStateView -------------------------------------------------------------------------

    def exclusive_process(self) -> bool:
        with self._lock:
            return any(
                value_or_none(st.last.compute_mode) == ComputeMode.EXCLUSIVE_PROCESS
                for st in self._live_states()
                if st.last is not None
            )

    def busy(self) -> bool:
        with self._lock:
            for st in self._live_states():
                util = value_or_none(st.last.utilization_gpu_pct) if st.last else None
                if isinstance(util, int) and util >= self.config.busy_utilization_pct:
                    return True
            return False

    def reset_generation(self) -> int:
        return self._reset_generation

    def gpu_fault(self) -> bool:
        with self._lock:
            return any(self._failing.values())

    def compute_capability(self) -> str | None:
        """Compute capability of the first visible GPU ("9.0"), or None before the first poll."""
        with self._lock:
            for st in self._live_states():
                if st.info.compute_capability:
                    return st.info.compute_capability
            return None

    def free_memory_mib(self) -> float | None:
        """The smallest free memory (MiB) among this pod's GPUs at the last poll, or None."""
        with self._lock:
            free = [
                m.free / (1024 * 1024)
                for st in self._live_states()
                if st.last is not None and isinstance(m := value_or_none(st.last.memory), MemoryInfo)
            ]
            return min(free) if free else None

    def _live_states(self) -> list[_GpuState]:
        return [self._gpus[u] for u in self._current if u in self._gpus]

    # -- evaluation ---------------------------------------------------------------------------

    async def refresh(self, *, submit: bool) -> list[CheckResult]:
        """Sample every GPU and return (and with ``submit`` also push) all GPU results."""
        if self._eval_lock is None:
            self._eval_lock = asyncio.Lock()
        async with self._eval_lock:
            results = await self._evaluate()
        self._record(results)
        if submit and self._sink is not None and not self._stopped:
            self._sink.submit(results)
        return results

    def _record(self, results: Sequence[CheckResult]) -> None:
        with self._lock:
            for r in results:
                if r.name.startswith("gpu/") or r.name == "nvml":
                    self._failing[r.name] = (not r.ok) and r.severity >= Severity.CRITICAL

    async def _call(self, fn: Any, op: str) -> Any:
        return await self._caller.call(fn, op=op, timeout_s=self.config.nvml_call_timeout_s)

    async def _evaluate(self) -> list[CheckResult]:
        backend = self.backend
        if not self._opened:
            try:
                self._system = await self._call(backend.open, "open")
            except NvmlHungError as exc:
                self.metrics.nvml_up.set(0)
                return [nvml_failed("NvmlHung", exc.text, hung=True)]
            except NvmlError as exc:
                self.metrics.nvml_up.set(0)
                return [self._nvml_error_result(exc)]
            self._opened = True
            log.info(
                "NVML opened",
                extra={"backend": backend.kind, "driver": self._system.driver_version},
            )
        enumerated = time.time()
        try:
            infos: list[GpuInfo] = await self._call(backend.devices, "devices")
        except NvmlHungError as exc:
            self.metrics.nvml_up.set(0)
            return [nvml_failed("NvmlHung", exc.text, hung=True)]
        except NvmlError as exc:
            if isinstance(exc, NvmlUnavailableError):
                self._opened = False
            self.metrics.nvml_up.set(0)
            return [self._nvml_error_result(exc)]

        with self._lock:
            self._current = [i.uuid for i in infos]
            for info in infos:
                st = self._gpus.get(info.uuid)
                if st is None or st.info != info:
                    ref = GpuRef.of(info)
                    if st is None:
                        self._gpus[info.uuid] = _GpuState(info=info, ref=ref)
                    else:
                        st.info, st.ref = info, ref
                if not info.lost:
                    self.metrics.gpu_info(info, self._system, backend.kind)

        if self.config.events and not self._registered:
            await self._register_events([i.uuid for i in infos if not i.lost])

        results: list[CheckResult] = []
        hung: NvmlHungError | None = None
        gone: set[str] = set()
        for info in infos:
            if info.lost:
                results.extend(
                    self._fold_error(info, GpuLostError("GPU lost at enumeration"), enumerated)
                )
                continue
            uuid = info.uuid
            taken = time.time()  # before the call: an Xid latched during it may be newer
            try:
                sample: GpuSample = await self._call(lambda u=uuid: backend.sample(u), "sample")
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
                self._opened = False
                self.metrics.nvml_up.set(0)
                return [self._nvml_error_result(exc)]
            except NvmlError as exc:
                results.append(nvml_failed(exc.reason, f"{uuid}: {exc.text}", hung=True, uuid=uuid))
                continue
            results.extend(self._fold(sample, taken))

        if hung is not None:
            self.metrics.nvml_up.set(0)
            results.append(nvml_failed("NvmlHung", hung.text, hung=True, uuid=hung.uuid or ""))
        else:
            self.metrics.nvml_up.set(1)
            driver = self._system.driver_version if self._system else ""
            results.append(nvml_ok(driver, backend.kind))
        infos = [i for i in infos if i.uuid not in gone]
        with self._lock:
            self._current = [i.uuid for i in infos]
        results.extend(self._absent({i.uuid for i in infos}, enumerated))
        results.append(
            inventory_result(infos, self.config.expected_uuids, self.config.expected_count)
        )
        problem = await asyncio.to_thread(self._persist)
        results.append(state_file_result(problem))
        return results

    def _persist(self) -> StoreProblem | None:
        """Save the latches and say whether the store can be trusted (worker thread)."""
        self.latches.save()
        return self.latches.health()

    def _absent(self, present: set[str], enumerated: float) -> list[CheckResult]:
        """GPUs no longer enumerated. With real NVML a container's GPUs are fixed, so one that
        vanishes fell off the bus: it is latched lost. A simulated GPU removed from the
        scenario without a latch leaves with its conditions, services and metric series (a
        phantom or removed GPU: ``gpu/inventory`` reports it when it was expected). One holding
        a fatal latch (an Xid 79, a lost GPU...) stays reported from its latches, gating, until
        evidence of a reset or a node reboot: vanishing is no evidence."""
        out: list[CheckResult] = []
        with self._lock:
            if not self.simulate:
                for uuid in [u for u in self._gpus if u not in present]:
                    if self.latches.add(
                        uuid,
                        Latch(
                            kind="lost",
                            reason="GpuLost",
                            message=f"GPU {uuid} is no longer enumerated by NVML (fallen off "
                            "the bus or inaccessible)",
                            scope="node",
                            since=enumerated,
                        ),
                    ):
                        log.error("GPU lost: no longer enumerated", extra={"uuid": uuid})
            latched = self.latches.all_latches()
            for uuid in [u for u in self._gpus if u not in present and u not in latched]:
                self._retire_gpu(self._gpus.pop(uuid))
            for uuid, latches in latched.items():
                if uuid in present:
                    self._absent_reported.discard(uuid)
                    continue
                st = self._gpus.get(uuid)
                if st is None:  # latched before a restart, not enumerated since
                    info = GpuInfo(index=-1, uuid=uuid, name="(not enumerated)")
                    st = self._gpus[uuid] = _GpuState(info=info, ref=GpuRef.of(info))
                if uuid not in self._absent_reported:
                    self._absent_reported.add(uuid)
                    log.error(
                        "GPU no longer enumerated while holding fatal latches; they stay reported",
                        extra={"uuid": uuid, "reasons": [x.reason for x in latches]},
                    )
                    self._retire_conditions(st, keep=("lost", "xid", "ecc", "remap"))
                out.extend(self._latched_results(st, latches))
        return out

    def _latched_results(self, st: _GpuState, latches: list[Latch]) -> list[CheckResult]:
        """The conditions of a GPU that is not enumerated, from its latches alone."""
        ref = st.ref
        self.metrics.fatal_latches.labels(uuid=st.info.uuid).set(len(latches))
        by_kind = {x.kind: x for x in latches}
        lost = by_kind.get("lost")
        out = [
            lost_result(ref, latch=lost, reset_required=None)
            if lost is not None
            else ref.fail(
                "lost",
                "GpuNotEnumerated",
                f"GPU {st.info.uuid} is no longer enumerated by NVML and holds fatal latches",
                severity=Severity.CRITICAL,
            ),
            xid_result(
                ref, latches, [], now=time.monotonic(), window_s=self.config.xid_report_window_s
            ),
        ]
        if "ecc" in by_kind:
            out.append(
                ecc_result(
                    ref,
                    UNSUPPORTED,
                    latch=by_kind["ecc"],
                    contained=False,
                    corrected_increase=0,
                    corrected_warn=0,
                    corrected_window_s=self.config.ecc_corrected_window_s,
                )
            )
        if "remap" in by_kind:
            out.append(remap_result(ref, UNSUPPORTED, UNSUPPORTED, latch=by_kind["remap"]))
        return out

    def _retire_gpu(self, st: _GpuState) -> None:
        """A GPU without latches left the inventory: its conditions, services, metrics go."""
        uuid = st.info.uuid
        self._absent_reported.discard(uuid)
        self.latches.forget(uuid)
        self.metrics.remove_gpu(uuid)
        self._retire_conditions(st, keep=())
        log.info("GPU left the inventory; its conditions and service are removed", extra={"uuid": uuid})

    def _retire_conditions(self, st: _GpuState, *, keep: Sequence[str]) -> None:
        uuids = [st.info.uuid, *(i.uuid for i in st.info.instances)]
        if keep:
            signals = ("recovery_action", "thermal", "memory", "compute_mode", "pcie", "events",
                       "inforom")
            prefixes = [f"{SERVICE_GPU}/{u}/{sig}" for u in uuids for sig in signals if sig not in keep]
        else:
            prefixes = [f"{SERVICE_GPU}/{u}/" for u in uuids]
        for name in [n for n in self._failing if n.startswith(tuple(prefixes))]:
            del self._failing[name]
        sink = self._sink
        if isinstance(sink, ConditionRetirer):
            services = [] if keep else sorted(st.ref.gates - GPU_GATES)
            sink.retire(prefixes, services)

    def _nvml_error_result(self, exc: NvmlError) -> CheckResult:
        if isinstance(exc, NvmlUnavailableError):
            return nvml_failed(exc.reason, f"NVML unavailable: {exc.text}")
        return nvml_failed(exc.reason, f"NVML error: {exc.text}", hung=True)

    async def _register_events(self, uuids: list[str]) -> None:
        try:
            regs: list[EventRegistration] = await self._call(
                lambda: self.backend.register_events(uuids), "register_events"
            )
        except NvmlError as exc:
            log.warning(
                "NVML event registration failed; polling only",
                extra={"reason": exc.reason, "error": exc.text},
            )
            with self._lock:
                for u in uuids:
                    if u in self._gpus:
                        self._gpus[u].registration = EventRegistration(u, 0, 0, exc.text)
            return
        with self._lock:
            for reg in regs:
                if reg.uuid in self._gpus:
                    self._gpus[reg.uuid].registration = reg
        self._registered = True
        self._listener.start()

    # -- per-GPU folding (event loop thread, under self._lock) --------------------------------

    def _fold_error(self, info: GpuInfo, exc: NvmlError, taken: float) -> list[CheckResult]:
        with self._lock:
            st = self._gpus[info.uuid]
            if isinstance(exc, GpuLostError):
                if self.latches.add(
                    info.uuid,
                    Latch(
                        kind="lost",
                        reason="GpuLost",
                        message=f"GPU {info.uuid} is lost (fallen off the bus or inaccessible): "
                        f"{exc.text}",
                        scope="node",
                        since=taken,
                    ),
                ):
                    log.error("GPU lost", extra={"uuid": info.uuid, "error": exc.text})
            else:
                st.reset_required = f"GPU requires a reset: {exc.text}"
            # a failing sample is a pre-reset observation too: latches up to it may clear
            self.latches.observe(info.uuid, at=taken)
            self.metrics.fatal_latches.labels(uuid=info.uuid).set(
                len(self.latches.latches(info.uuid))
            )
            return [
                self._lost(st),
                xid_result(
                    st.ref,
                    self.latches.latches(info.uuid),
                    list(st.recent),
                    now=time.monotonic(),
                    window_s=self.config.xid_report_window_s,
                ),
            ]

    def _lost(self, st: _GpuState) -> CheckResult:
        latch = next((x for x in self.latches.latches(st.info.uuid) if x.kind == "lost"), None)
        return lost_result(st.ref, latch=latch, reset_required=st.reset_required)

    def _reset_evidence(self, uuid: str, sample: GpuSample) -> str | None:
        obs = self.latches.gpu(uuid).observed
        if (
            sample.reset_count is not None
            and obs.reset_count is not None
            and sample.reset_count != obs.reset_count
        ):
            return f"reset counter changed {obs.reset_count} -> {sample.reset_count}"
        ecc = value_or_none(sample.ecc)
        if isinstance(ecc, EccCounters):
            for label, prev, cur in (
                ("uncorrected", obs.volatile_uncorrected, ecc.volatile_uncorrected),
                ("corrected", obs.volatile_corrected, ecc.volatile_corrected),
            ):
                if prev is not None and cur is not None and cur < prev:
                    return f"volatile {label} ECC counter went back {prev} -> {cur}"
        action = value_or_none(sample.recovery_action)
        if (
            obs.recovery_action is not None
            and (obs.recovery_action in RESET_CLASS_ACTIONS | REBOOT_CLASS_ACTIONS)
            and action == 0
        ):
            return "recovery action went back to none"
        return None

    def _fold(self, sample: GpuSample, taken: float) -> list[CheckResult]:
        """Fold one sample, taken (its NVML calls started) at wall time ``taken``."""
        cfg = self.config
        now = time.monotonic()
        uuid = sample.info.uuid
        with self._lock:
            st = self._gpus[uuid]
            ref = st.ref
            first = not st.sampled
            st.sampled = True
            st.reset_required = None
            known = self.latches.known(uuid)
            evidence = self._reset_evidence(uuid, sample) if known else None
            if evidence is not None:
                self._on_reset(uuid, st, evidence)

            ecc = value_or_none(sample.ecc)
            obs = self.latches.gpu(uuid).observed
            if isinstance(ecc, EccCounters) and ecc.volatile_uncorrected is not None:
                cur = ecc.volatile_uncorrected
                prev = obs.volatile_uncorrected
                if (prev is None and cur > 0) or (prev is not None and cur > prev):
                    self._classify_ecc_increase(st, prev, cur, now, taken)
                elif first and prev is not None and cur == prev and cur > 0:
                    # seen before this restart and not latched then: it was contained
                    st.ecc_contained = not any(x.kind == "ecc" for x in self.latches.latches(uuid))
                if cur == 0:
                    st.ecc_contained = False
            remap = value_or_none(sample.remap)
            if isinstance(remap, RemappedRows) and remap.failure:
                self.latches.add(
                    uuid,
                    Latch(
                        kind="remap",
                        reason="RemapFailure",
                        message="row remapping failed (RMA criterion); GPU unusable until "
                        "reset and replaced",
                        since=taken,
                    ),
                )
            action = value_or_none(sample.recovery_action)
            self.latches.observe(
                uuid,
                at=taken,
                volatile_uncorrected=ecc.volatile_uncorrected
                if isinstance(ecc, EccCounters)
                else obs.volatile_uncorrected,
                volatile_corrected=ecc.volatile_corrected
                if isinstance(ecc, EccCounters)
                else obs.volatile_corrected,
                reset_count=sample.reset_count,
                recovery_action=action if isinstance(action, int) else obs.recovery_action,
            )
            corrected_increase = 0
            if isinstance(ecc, EccCounters) and ecc.volatile_corrected is not None:
                corrected_increase = _increase(
                    st.corrected_hist, now, ecc.volatile_corrected, cfg.ecc_corrected_window_s
                )
            replay_increase = 0
            if isinstance(sample.pcie_replay_count, int):
                replay_increase = _increase(
                    st.replay_hist, now, sample.pcie_replay_count, cfg.pcie_replay_window_s
                )
            clocks = sample.clock_event_reasons
            if isinstance(clocks, int) and clocks & CLOCKS_HW_MASK:
                if st.hw_slowdown_since is None:
                    st.hw_slowdown_since = now
            else:
                st.hw_slowdown_since = None
            st.last = sample
            st.last_taken = taken
            self.metrics.sample(sample)
            latches = self.latches.latches(uuid)
            self.metrics.fatal_latches.labels(uuid=uuid).set(len(latches))
            by_kind = {x.kind: x for x in latches}

            slowdown = cfg.thermal_slowdown_c
            if slowdown is None and isinstance(sample.slowdown_threshold_c, int):
                slowdown = float(sample.slowdown_threshold_c)
            shutdown = cfg.thermal_shutdown_c
            if shutdown is None and isinstance(sample.shutdown_threshold_c, int):
                shutdown = float(sample.shutdown_threshold_c)
            reg = st.registration
            results = [
                self._lost(st),
                xid_result(ref, latches, list(st.recent), now=now, window_s=cfg.xid_report_window_s),
                ecc_result(
                    ref,
                    sample.ecc,
                    latch=by_kind.get("ecc"),
                    contained=st.ecc_contained,
                    corrected_increase=corrected_increase,
                    corrected_warn=cfg.ecc_corrected_warn,
                    corrected_window_s=cfg.ecc_corrected_window_s,
                ),
                remap_result(
                    ref, sample.remap, sample.retired_pages_pending, latch=by_kind.get("remap")
                ),
                recovery_action_result(
                    ref,
                    sample.recovery_action,
                    multi_gpu_model=cfg.multi_gpu_model,
                    multi_node_nvlink=cfg.multi_node_nvlink,
                ),
                thermal_result(
                    ref,
                    sample.temperature_c,
                    slowdown,
                    shutdown,
                    clock_reasons=clocks,
                    hw_slowdown_for_s=None
                    if st.hw_slowdown_since is None
                    else now - st.hw_slowdown_since,
                    sustain_s=cfg.thermal_sustain_s,
                ),
                memory_result(
                    ref,
                    sample.memory,
                    sample.processes,
                    required_mib=cfg.required_memory_mib,
                    exclusive_process=value_or_none(sample.compute_mode)
                    == ComputeMode.EXCLUSIVE_PROCESS,
                ),
                compute_mode_result(ref, sample.compute_mode),
                pcie_result(
                    ref,
                    sample.pcie_replay_count,
                    increase=replay_increase,
                    warn=cfg.pcie_replay_warn,
                    window_s=cfg.pcie_replay_window_s,
                ),
            ]
            if cfg.events:
                results.append(
                    events_result(
                        ref,
                        registered=reg.registered if reg else 0,
                        unsupported=reg.unsupported if reg else 0,
                        error=reg.error if reg else "",
                    )
                    if reg is not None
                    else events_result(ref, registered=0, unsupported=0, error="not registered")
                )
            return results

    def _classify_ecc_increase(
        self, st: _GpuState, prev: int | None, cur: int, now: float, taken: float
    ) -> None:
        """An uncorrectable ECC increase: classify with the accompanying Xid, run the canary."""
        uuid = st.info.uuid
        window = self.config.ecc_xid_window_s
        near = [r for r in st.recent if abs(now - r.at) <= window]
        uncontained = [r for r in near if r.code in XID_ECC_UNCONTAINED]
        contained = [r for r in near if r.code == XID_ECC_CONTAINED]
        rise = f"volatile uncorrected ECC count rose {prev if prev is not None else 0} -> {cur}"
        if contained and not uncontained:
            st.ecc_contained = True
            log.warning("contained uncorrectable ECC error", extra={"uuid": uuid, "count": cur})
        else:
            code = uncontained[0].code if uncontained else 0
            why = f" with Xid {code} (uncontained)" if code else " (no contained Xid 94 seen)"
            self.latches.add(
                uuid,
                Latch(
                    kind="ecc",
                    reason="EccUncorrectable",
                    message=f"{rise}{why}; GPU unusable until a reset is observed",
                    code=code,
                    since=taken,
                ),
            )
            log.error("uncorrectable ECC error", extra={"uuid": uuid, "count": cur, "xid": code})
        if self._sink is not None:
            self._sink.trigger(CANARY_CHECK)

    def _on_reset(self, uuid: str, st: _GpuState, evidence: str) -> None:
        # Only latches set at or before the baseline sample (which still showed the pre-reset
        # state, possibly before a restart) are cleared: a fatal Xid latched after it may have
        # come after (or with) the reset, so it stays (fail closed) until the next evidence.
        cleared = self.latches.clear_on_reset(uuid)
        st.ecc_contained = False
        st.recent.clear()
        st.corrected_hist.clear()
        self._reset_generation += 1
        self.metrics.resets.labels(uuid=uuid).inc()
        log.warning(
            "GPU reset observed",
            extra={
                "uuid": uuid,
                "evidence": evidence,
                "cleared": [x.reason for x in cleared],
                "generation": self._reset_generation,
            },
        )

    # -- events (listener thread) -------------------------------------------------------------

    def _on_event(self, ev: GpuEvent) -> None:
        try:
            self._handle_event(ev)
        finally:
            self._events_handled += 1

    def _handle_event(self, ev: GpuEvent) -> None:
        sink = self._sink
        with self._lock:
            uuid = ev.uuid
            if uuid not in self._gpus and len(self._current) == 1:
                uuid = self._current[0]  # a handle we could not map: the only GPU
            st = self._gpus.get(uuid)
            if ev.event_type & EventType.DOUBLE_BIT_ECC:
                self.metrics.ecc_events.labels(uuid=uuid, type="double_bit").inc()
            if ev.event_type & EventType.SINGLE_BIT_ECC:
                self.metrics.ecc_events.labels(uuid=uuid, type="single_bit").inc()
            if not ev.event_type & EventType.XID_CRITICAL:
                triggers = []
                if ev.event_type & (EventType.DOUBLE_BIT_ECC | EventType.GPU_RECOVERY_ACTION):
                    triggers.append(POLL_CHECK)
                if ev.event_type & EventType.DOUBLE_BIT_ECC:
                    triggers.append(CANARY_CHECK)
                results: list[CheckResult] = []
            else:
                results, triggers = self._xid_event(ev, uuid, st)
        if sink is None:
            return
        if results:
            self.latches.save()
            self._record(results)
            sink.submit(results)
        for name in triggers:
            sink.trigger(name)

    def _xid_event(
        self, ev: GpuEvent, uuid: str, st: _GpuState | None
    ) -> tuple[list[CheckResult], list[str]]:
        code = ev.data
        cls = self.table.classify(code)
        if st is not None and st.info.mig_enabled and st.info.instances and ev.gpu_instance_id != MIG_ID_ANY:
            ours = any(
                i.gpu_instance_id == ev.gpu_instance_id
                and ev.compute_instance_id in (MIG_ID_ANY, i.compute_instance_id)
                for i in st.info.instances
            )
            if not ours:
                self.metrics.xid_ignored.labels(uuid=uuid, code=str(code)).inc()
                log.info(
                    "Xid of another MIG instance ignored",
                    extra={"uuid": uuid, "xid": code, "gi": _mig_id(ev.gpu_instance_id)},
                )
                return [], []
        self.metrics.xid.labels(uuid=uuid, code=str(code), **{"class": cls.value}).inc()
        fatal = cls in (XidClass.NODE_FATAL, XidClass.GPU_FATAL) or (
            cls is XidClass.NVLINK and self.config.multi_gpu_model
        )
        log_fn = log.error if fatal else log.warning
        log_fn(
            "Xid event",
            extra={
                "uuid": uuid,
                "xid": code,
                "xid_class": cls.value,
                "description": self.table.describe(code),
                "gi": _mig_id(ev.gpu_instance_id),
                "ci": _mig_id(ev.compute_instance_id),
            },
        )
        triggers: list[str] = []
        if cls is XidClass.UNKNOWN:
            triggers.append(CANARY_CHECK)
        if (
            fatal  # sample at once: a later reset is then told apart from the fault (latches)
            or code == XID_RECOVERY_ACTION_CHANGED
            or code in XID_ECC_UNCONTAINED
            or code == XID_ECC_CONTAINED
        ):
            triggers.append(POLL_CHECK)
        if st is None or cls is XidClass.IGNORE:
            return [], triggers
        now = time.monotonic()
        st.recent.append(
            XidRecord(
                code=code,
                cls=cls,
                at=now,
                wall=ev.wall_time or time.time(),
                gpu_instance_id=ev.gpu_instance_id,
                compute_instance_id=ev.compute_instance_id,
                fatal=fatal,
            )
        )
        results: list[CheckResult] = []
        if fatal:
            scope = "node" if cls is XidClass.NODE_FATAL else "gpu"
            self.latches.add(
                uuid,
                Latch(
                    kind="xid",
                    reason=xid_reason(code, cls),
                    message=f"Xid {code}: {self.table.describe(code)}",
                    scope=scope,
                    code=code,
                    # when the backend received it: a sample taken after that may clear it
                    since=ev.wall_time or time.time(),
                ),
            )
        if code == XID_ECC_CONTAINED:
            ecc_latch = next(
                (x for x in self.latches.latches(uuid) if x.kind == "ecc" and x.code == 0), None
            )
            if ecc_latch is not None and time.time() - ecc_latch.since <= self.config.ecc_xid_window_s:
                # the ECC increase seen just before is the contained one (Xid 94)
                self.latches.remove(uuid, "ecc")
                st.ecc_contained = True
            if st.last is not None:
                current = next((x for x in self.latches.latches(uuid) if x.kind == "ecc"), None)
                results.append(
                    ecc_result(
                        st.ref,
                        st.last.ecc,
                        latch=current,
                        contained=st.ecc_contained,
                        corrected_increase=0,
                        corrected_warn=0,
                        corrected_window_s=self.config.ecc_corrected_window_s,
                    )
                )
        latches = self.latches.latches(uuid)
        self.metrics.fatal_latches.labels(uuid=uuid).set(len(latches))
        results.append(
            xid_result(st.ref, latches, list(st.recent), now=now, window_s=self.config.xid_report_window_s)
        )
        return results, triggers

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
            states = [st for st in self._live_states() if not st.info.lost]
        for st in states:
            uuid = st.info.uuid
            try:
                reading = await self._call(lambda u=uuid: self.backend.validate_inforom(u), "inforom")
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
            return list(self._current)

    def identity(self) -> dict[str, str]:
        """GPU model and driver / CUDA driver versions (the replica-consistency key); empty
        strings until NVML answered."""
        with self._lock:
            names = sorted({self._gpus[u].info.name for u in self._current if u in self._gpus})
        system = self._system
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
            out: dict[str, tuple[float, GpuSample]] = {}
            for uuid in self._current:
                st = self._gpus.get(uuid)
                if st is not None and st.last is not None:
                    out[uuid] = (st.last_taken, st.last)
            return out

    def recent_xids(self) -> dict[str, list[XidRecord]]:
        """Xids seen per GPU since the last observed reset (wall time of receipt included)."""
        with self._lock:
            return {u: list(st.recent) for u, st in self._gpus.items()}


def _mig_id(value: int) -> int | str:
    """A MIG GPU / compute instance id for the log: "none" for NVML's "no instance" value."""
    return "none" if value == MIG_ID_ANY else value
