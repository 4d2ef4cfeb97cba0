"""The simulated GPU backend: the same surface as NVML, state driven by the scenario file.

The ``gpus:`` list (and an optional ``nvml:`` mapping) of the scenario document describe the
GPUs; ``docs/scenario.md`` documents every key with an example per fault. A document whose
``gpus:`` part does not validate is ignored (logged) and the last good state stays. No
``gpus:`` key means one healthy GPU, so the demo is ready by default.

Events are delivered through :meth:`wait_event`, exactly like NVML's event set, so the same
:class:`~sidecar.gpu.listener.XidListener` code runs against both backends: an Xid code is
delivered when it appears in a GPU's ``xid`` list (removing it and adding it again delivers it
again); an increase of ``ecc_volatile_uncorrected`` / ``ecc_volatile_corrected`` delivers a
double- / single-bit ECC event; a change of ``recovery_action`` a recovery-action event.
A change of ``reset`` simulates a GPU reset: volatile ECC counters restart from zero and
reset-class states (recovery action, pending remap / retirement, lost, reset required) clear
until the scenario sets them again.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.core.protocols import Clock
from sidecar.gpu.backend import (
    UNSUPPORTED,
    EccCounters,
    EventRegistration,
    EventType,
    GpuEvent,
    GpuGoneError,
    GpuInfo,
    GpuLostError,
    GpuSample,
    MemoryInfo,
    NvmlUnavailableError,
    Reading,
    RemappedRows,
    ResetRequiredError,
    SystemInfo,
)
from sidecar.gpu.sim_scenario import (
    MIB,
    NOT_WRITTEN_YET,
    UNAVAILABLE_KINDS,
    SimGpu,
    SimState,
    default_gpu,
    parse_sim_state,
)
from sidecar.runtime.scenario import ScenarioFile

__all__ = ["SimulatedBackend", "parse_sim_state"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _ResetMask:
    """Values the last simulated reset cleared; they stay cleared until the scenario changes."""

    reset: int
    ecc_corrected_base: int = 0
    ecc_uncorrected_base: int = 0
    cleared: dict[str, Any] = field(default_factory=dict)


_RESET_CLEARS = {
    "recovery_action": 0,
    "remap_pending": False,
    "retired_pages_pending": False,
    "lost": False,
    "reset_required": False,
}


class SimulatedBackend:
    """GPU backend whose state is the scenario file's ``gpus:`` part (see module doc)."""

    kind = "simulated"

    def __init__(self, scenario: ScenarioFile | None = None, *, wall: Clock = time.time) -> None:
        self._wall = wall  # stamps the events it delivers (when "the driver" received them)
        self._lock = threading.Condition()
        self._events: queue.Queue[GpuEvent] = queue.Queue()
        self._queued = 0
        self._state = SimState(gpus=(default_gpu(),))
        self._masks: dict[str, _ResetMask] = {}
        self._registered: set[str] = set()
        self._closed = False
        self.last_error: str | None = None
        self.generation = 0
        if scenario is not None:
            if scenario.has_document:
                self.apply(scenario.current())
            else:
                self._state = NOT_WRITTEN_YET
            scenario.subscribe(self._on_scenario)
        else:
            self.apply({})

    # -- scenario -----------------------------------------------------------------------------

    def _on_scenario(self, doc: Mapping[str, Any]) -> None:
        self.apply(doc)

    def apply(self, doc: Mapping[str, Any]) -> bool:
        """Apply a scenario document; returns False (last good state stays) when it is bad."""
        try:
            new = parse_sim_state(doc)
        except ValueError as exc:
            if self.last_error != str(exc):
                log.warning("scenario gpus ignored, last good state stays", extra={"error": str(exc)})
            self.last_error = str(exc)
            return False
        self.last_error = None
        with self._lock:
            old = {g.uuid: self._effective(g) for g in self._state.gpus}
            old_raw = {g.uuid: g for g in self._state.gpus}
            for g in new.gpus:
                prev = old_raw.get(g.uuid)
                mask = self._masks.get(g.uuid)
                if mask is None:
                    self._masks[g.uuid] = _ResetMask(reset=g.reset)
                elif g.reset != mask.reset:
                    self._masks[g.uuid] = _ResetMask(
                        reset=g.reset,
                        ecc_corrected_base=g.ecc_volatile_corrected,
                        ecc_uncorrected_base=g.ecc_volatile_uncorrected,
                        cleared={k: getattr(g, k) for k in _RESET_CLEARS},
                    )
                elif prev is not None:
                    # a field the scenario changed since the reset is no longer masked
                    for key in list(mask.cleared):
                        if getattr(g, key) != getattr(prev, key):
                            del mask.cleared[key]
            self._state = new
            self.generation += 1
            for g in new.gpus:
                if g.uuid in self._registered:
                    self._queue_changes(old.get(g.uuid), old_raw.get(g.uuid), g)
            self._lock.notify_all()
        return True

    def _effective(self, g: SimGpu) -> SimGpu:
        mask = self._masks.get(g.uuid)
        if mask is None:
            return g
        changes: dict[str, Any] = {
            "ecc_volatile_corrected": max(0, g.ecc_volatile_corrected - mask.ecc_corrected_base),
            "ecc_volatile_uncorrected": max(0, g.ecc_volatile_uncorrected - mask.ecc_uncorrected_base),
        }
        for key in mask.cleared:
            changes[key] = _RESET_CLEARS[key]
        return dataclasses.replace(g, **changes)

    def _queue_changes(self, old: SimGpu | None, old_raw: SimGpu | None, raw: SimGpu) -> None:
        new = self._effective(raw)
        now = self._wall()
        seen = set(old_raw.xid) if old_raw is not None else set()
        for x in raw.xid:
            if x not in seen:
                self._put(GpuEvent(new.uuid, int(EventType.XID_CRITICAL), x.code, x.gi, x.ci, now))
                seen.add(x)
        if "events" in new.unsupported:
            return
        before_unc = old.ecc_volatile_uncorrected if old is not None else 0
        before_corr = old.ecc_volatile_corrected if old is not None else 0
        if new.ecc_volatile_uncorrected > before_unc:
            self._put(GpuEvent(new.uuid, int(EventType.DOUBLE_BIT_ECC), 0, wall_time=now))
        if new.ecc_volatile_corrected > before_corr:
            self._put(GpuEvent(new.uuid, int(EventType.SINGLE_BIT_ECC), 0, wall_time=now))
        if old is not None and new.recovery_action != old.recovery_action:
            self._put(GpuEvent(new.uuid, int(EventType.GPU_RECOVERY_ACTION), 0, wall_time=now))

    def _gpu(self, uuid: str) -> SimGpu:
        for g in self._state.gpus:
            if g.uuid == uuid:
                return self._effective(g)
        raise GpuGoneError(f"simulated GPU {uuid} is no longer present", uuid=uuid)

    def _wait_not_hung(self, uuid: str | None = None) -> None:
        """Block like a hung driver call while the scenario says so (released by close())."""
        with self._lock:
            while not self._closed:
                hung = self._state.hang
                if uuid is not None and not hung:
                    hung = any(g.uuid == uuid and g.nvml_hang for g in self._state.gpus)
                if not hung:
                    return
                self._lock.wait(0.5)

    def _check_available(self) -> None:
        name = self._state.unavailable
        if name is not None:
            cls = UNAVAILABLE_KINDS.get(name.lower(), NvmlUnavailableError)
            raise cls(f"simulated: {name}" + (f" ({self._state.note})" if self._state.note else ""))

    # -- protocol -----------------------------------------------------------------------------

    def open(self) -> SystemInfo:
        self._wait_not_hung()
        with self._lock:
            self._check_available()
            return SystemInfo(
                driver_version=self._state.driver_version,
                nvml_version="13.580.00 (simulated)",
                cuda_driver_version=13000,
            )

    def devices(self) -> list[GpuInfo]:
        self._wait_not_hung()
        with self._lock:
            self._check_available()
            return [self._info(self._effective(g)) for g in self._state.gpus]

    @staticmethod
    def _info(g: SimGpu) -> GpuInfo:
        return GpuInfo(
            index=g.index,
            uuid=g.uuid,
            name=g.name,
            pci_bus_id=f"00000000:{0x18 + g.index:02X}:00.0",
            mig_enabled=g.mig,
            instances=g.mig_instances if g.mig else (),
            compute_capability=g.compute_capability,
        )

    def sample(self, uuid: str) -> GpuSample:
        self._wait_not_hung(uuid)
        with self._lock:
            self._check_available()
            g = self._gpu(uuid)
        if g.lost:
            raise GpuLostError("GPU is lost (simulated)", code=15, uuid=uuid)
        if g.reset_required:
            raise ResetRequiredError("GPU requires reset (simulated)", code=16, uuid=uuid)
        off = set(g.unsupported)
        if g.mig:  # NVML: remapped rows, utilisation and the process list are not per-GPU
            off |= {"remap", "utilization_gpu_pct", "processes", "retired_pages_pending"}

        def r(name: str, value: Any) -> Reading[Any]:
            return UNSUPPORTED if name in off else value

        total = g.memory_total_mib * MIB
        free = g.memory_free_mib * MIB
        return GpuSample(
            info=self._info(g),
            ecc=r(
                "ecc",
                EccCounters(
                    volatile_corrected=g.ecc_volatile_corrected,
                    volatile_uncorrected=g.ecc_volatile_uncorrected,
                    aggregate_corrected=max(g.ecc_aggregate_corrected, g.ecc_volatile_corrected),
                    aggregate_uncorrected=max(g.ecc_aggregate_uncorrected, g.ecc_volatile_uncorrected),
                ),
            ),
            remap=r(
                "remap",
                RemappedRows(g.remap_correctable, g.remap_uncorrectable, g.remap_pending, g.remap_failure),
            ),
            retired_pages_pending=r("retired_pages_pending", g.retired_pages_pending),
            recovery_action=r("recovery_action", g.recovery_action),
            memory=r("memory", MemoryInfo(total=total, used=total - free, free=free)),
            temperature_c=r("temperature_c", g.temperature_c),
            slowdown_threshold_c=r("slowdown_threshold_c", g.temperature_slowdown_c),
            shutdown_threshold_c=r("shutdown_threshold_c", g.temperature_shutdown_c),
            clock_event_reasons=r("clock_event_reasons", g.clock_event_reasons),
            compute_mode=r("compute_mode", g.compute_mode),
            utilization_gpu_pct=r("utilization_gpu_pct", g.utilization_gpu),
            pcie_replay_count=r("pcie_replay_count", g.pcie_replay),
            processes=r("processes", g.processes),
            reset_count=g.reset,
        )

    def validate_inforom(self, uuid: str) -> Reading[bool]:
        self._wait_not_hung(uuid)
        with self._lock:
            self._check_available()
            g = self._gpu(uuid)
        if "inforom" in g.unsupported:
            return UNSUPPORTED
        return g.inforom_valid

    def register_events(self, uuids: Iterable[str]) -> list[EventRegistration]:
        out: list[EventRegistration] = []
        with self._lock:
            for uuid in uuids:
                raw = next((g for g in self._state.gpus if g.uuid == uuid), None)
                if raw is None:
                    continue
                g = self._effective(raw)
                if "events" in g.unsupported:
                    out.append(EventRegistration(uuid, 0, int(EventType.XID_CRITICAL) | 0x3))
                    continue
                if uuid not in self._registered:
                    self._registered.add(uuid)
                    # the codes already listed are delivered once at registration
                    self._queue_changes(g, None, raw)
                out.append(
                    EventRegistration(
                        uuid,
                        int(
                            EventType.XID_CRITICAL
                            | EventType.DOUBLE_BIT_ECC
                            | EventType.SINGLE_BIT_ECC
                            | EventType.GPU_RECOVERY_ACTION
                        ),
                    )
                )
        return out

    def _put(self, event: GpuEvent) -> None:
        self._queued += 1
        self._events.put(event)

    def events_queued(self) -> int:
        """How many events were queued so far (the component waits for the listener)."""
        return self._queued

    def wait_event(self, timeout_s: float) -> GpuEvent | None:
        try:
            return self._events.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def inject_event(self, event: GpuEvent) -> None:
        """Queue an event directly (tests)."""
        self._put(event)
