"""The simulated GPUs of the scenario file: the ``gpus:`` (and ``nvml:``) part parsed into
:class:`SimState` (pure; every problem named by its field). ``docs/scenario.md`` documents every
key; :mod:`sidecar.gpu.simulated` is the backend that serves this state as NVML would."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config import Section
from sidecar.gpu.backend import (
    MIG_ID_ANY,
    SIGNALS,
    DriverNotLoadedError,
    DriverVersionMismatchError,
    MigInstance,
    NvmlUnavailableError,
    ProcessInfo,
    RecoveryAction,
)
from sidecar.runtime.safeload import short_repr

MIB = 1024 * 1024
DEFAULT_NAME = "NVIDIA H100 80GB HBM3 (simulated)"
DEFAULT_TOTAL_MIB = 81559
DEFAULT_FREE_MIB = 80000

RECOVERY_ACTION_NAMES = tuple(a.name.lower() for a in RecoveryAction)
COMPUTE_MODE_NAMES = {"default": 0, "exclusive_thread": 1, "prohibited": 2, "exclusive_process": 3}
CLOCK_REASON_NAMES = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
}
UNAVAILABLE_KINDS: dict[str, type[NvmlUnavailableError]] = {
    "nvmlunavailable": NvmlUnavailableError,
    "drivernotloaded": DriverNotLoadedError,
    "driverversionmismatch": DriverVersionMismatchError,
}


@dataclass(frozen=True, slots=True)
class SimXid:
    code: int
    gi: int = MIG_ID_ANY
    ci: int = MIG_ID_ANY


@dataclass(frozen=True, slots=True)
class SimGpu:
    """One simulated GPU as the scenario describes it."""

    index: int
    uuid: str
    name: str = DEFAULT_NAME
    lost: bool = False
    reset_required: bool = False
    xid: tuple[SimXid, ...] = ()
    ecc_volatile_corrected: int = 0
    ecc_volatile_uncorrected: int = 0
    ecc_aggregate_corrected: int = 0
    ecc_aggregate_uncorrected: int = 0
    remap_correctable: int = 0
    remap_uncorrectable: int = 0
    remap_pending: bool = False
    remap_failure: bool = False
    retired_pages_pending: bool = False
    recovery_action: int = 0
    memory_total_mib: int = DEFAULT_TOTAL_MIB
    memory_free_mib: int = DEFAULT_FREE_MIB
    temperature_c: int = 40
    temperature_slowdown_c: int = 87
    temperature_shutdown_c: int = 92
    clock_event_reasons: int = 0
    compute_mode: int = 0
    utilization_gpu: int = 0
    pcie_replay: int = 0
    processes: tuple[ProcessInfo, ...] = ()
    inforom_valid: bool = True
    mig: bool = False
    mig_instances: tuple[MigInstance, ...] = ()
    unsupported: frozenset[str] = frozenset()
    compute_capability: str = "9.0"
    nvml_hang: bool = False
    reset: int = 0


@dataclass(frozen=True, slots=True)
class SimState:
    """The parsed GPU part of one scenario document."""

    gpus: tuple[SimGpu, ...]
    unavailable: str | None = None  # reason class name, e.g. "DriverNotLoaded"
    hang: bool = False
    driver_version: str = "580.00 (simulated)"
    note: str = ""  # why NVML is unavailable, when the scenario itself is the reason


# Until the scenario file's first good document: no GPU, NVML unavailable (fail closed).
NOT_WRITTEN_YET = SimState(gpus=(), unavailable="NvmlUnavailable", note="scenario file not written yet")


def default_gpu(index: int = 0) -> SimGpu:
    return SimGpu(index=index, uuid=f"GPU-sim-{index}")


def parse_sim_state(doc: Mapping[str, Any]) -> SimState:
    """Parse the ``gpus:`` / ``nvml:`` part of a scenario. Raises ValueError naming each field."""
    errors: list[str] = []
    root = Section(doc, "", errors)
    nvml = root.sub("nvml")
    unavailable_raw = nvml.raw.get("unavailable") if nvml.raw else None
    nvml._known.add("unavailable")
    unavailable: str | None = None
    if unavailable_raw is True:
        unavailable = "NvmlUnavailable"
    elif isinstance(unavailable_raw, str):
        if unavailable_raw.lower() not in UNAVAILABLE_KINDS:
            nvml.error(
                "unavailable",
                "must be true, NvmlUnavailable, DriverNotLoaded or DriverVersionMismatch",
            )
        else:
            unavailable = unavailable_raw
    elif unavailable_raw not in (None, False):
        nvml.error("unavailable", f"must be true or a reason name, got {short_repr(unavailable_raw)}")
    hang = nvml.flag("hang", False)
    driver = nvml.text("driver_version", "580.00 (simulated)")
    nvml.reject_unknown()
    gpus: list[SimGpu] = []
    if root.has("gpus"):
        for i, sec in enumerate(root.sub_list("gpus")):
            gpus.append(_parse_gpu(sec, i))
    else:
        gpus.append(default_gpu())
    uuids = [g.uuid for g in gpus]
    if len(set(uuids)) != len(uuids):
        errors.append("gpus: uuids must be unique")
    if errors:
        raise ValueError("; ".join(errors))
    return SimState(gpus=tuple(gpus), unavailable=unavailable, hang=hang, driver_version=driver)


def _parse_gpu(sec: Section, position: int) -> SimGpu:
    index = sec.integer("index", position, minimum=0)
    uuid = sec.text("uuid", f"GPU-sim-{index}")
    xids: list[SimXid] = []
    raw_xids = sec.raw.get("xid") or []
    if not isinstance(raw_xids, list):
        # `xid: 79` is a typo for `xid: [79]`: name the key and the shape, inject nothing
        sec.error("xid", f"must be a list of Xid codes (e.g. [79]), got {short_repr(raw_xids)}")
        raw_xids = []
    for j, item in enumerate(raw_xids):
        if isinstance(item, int) and not isinstance(item, bool):
            xids.append(SimXid(item))
        elif isinstance(item, Mapping):
            x = Section(item, f"{sec.field('xid')}[{j}]", sec.errors)
            xids.append(
                SimXid(
                    x.integer("code", 0, minimum=0),
                    x.integer("gi", MIG_ID_ANY, minimum=0),
                    x.integer("ci", MIG_ID_ANY, minimum=0),
                )
            )
            x.reject_unknown()
        else:
            sec.error("xid", f"items must be Xid codes or {{code, gi, ci}}, got {short_repr(item)}")
    sec._known.add("xid")
    action = sec.text("recovery_action", "none", choices=RECOVERY_ACTION_NAMES)
    mode = sec.text("compute_mode", "default", choices=tuple(COMPUTE_MODE_NAMES))
    clocks = _clock_reasons(sec)
    processes = tuple(
        ProcessInfo(pid=p.integer("pid", 0, minimum=0), used_bytes=p.integer("used_mib", 0) * MIB)
        for p in sec.sub_list("processes")
    )
    instances = tuple(
        MigInstance(
            uuid=m.text("uuid", f"MIG-sim-{index}-{k}"),
            gpu_instance_id=m.integer("gi", k + 1, minimum=0),
            compute_instance_id=m.integer("ci", 0, minimum=0),
        )
        for k, m in enumerate(sec.sub_list("mig_instances"))
    )
    unsupported = frozenset(sec.text_list("unsupported"))
    for name in unsupported - set(SIGNALS) - {"inforom", "events"}:
        sec.error("unsupported", f"unknown signal {name!r}; known: {', '.join(SIGNALS)}")
    gpu = SimGpu(
        index=index,
        uuid=uuid,
        name=sec.text("name", DEFAULT_NAME),
        lost=sec.flag("lost", False),
        reset_required=sec.flag("reset_required", False),
        xid=tuple(xids),
        ecc_volatile_corrected=sec.integer("ecc_volatile_corrected", 0, minimum=0),
        ecc_volatile_uncorrected=sec.integer("ecc_volatile_uncorrected", 0, minimum=0),
        ecc_aggregate_corrected=sec.integer("ecc_aggregate_corrected", 0, minimum=0),
        ecc_aggregate_uncorrected=sec.integer("ecc_aggregate_uncorrected", 0, minimum=0),
        remap_correctable=sec.integer("remap_correctable", 0, minimum=0),
        remap_uncorrectable=sec.integer("remap_uncorrectable", 0, minimum=0),
        remap_pending=sec.flag("remap_pending", False),
        remap_failure=sec.flag("remap_failure", False),
        retired_pages_pending=sec.flag("retired_pages_pending", False),
        recovery_action=int(RecoveryAction[action.upper()]),
        memory_total_mib=sec.integer("memory_total_mib", DEFAULT_TOTAL_MIB, minimum=1),
        memory_free_mib=sec.integer("memory_free_mib", DEFAULT_FREE_MIB, minimum=0),
        temperature_c=sec.integer("temperature_c", 40),
        temperature_slowdown_c=sec.integer("temperature_slowdown_c", 87),
        temperature_shutdown_c=sec.integer("temperature_shutdown_c", 92),
        clock_event_reasons=clocks,
        compute_mode=COMPUTE_MODE_NAMES[mode],
        utilization_gpu=sec.integer("utilization_gpu", 0, minimum=0, maximum=100),
        pcie_replay=sec.integer("pcie_replay", 0, minimum=0),
        processes=processes,
        inforom_valid=sec.flag("inforom_valid", True),
        mig=sec.flag("mig", False),
        mig_instances=instances,
        unsupported=unsupported,
        compute_capability=sec.text("compute_capability", "9.0"),
        nvml_hang=sec.flag("nvml_hang", False),
        reset=sec.integer("reset", 0, minimum=0),
    )
    if gpu.memory_free_mib > gpu.memory_total_mib:
        sec.error("memory_free_mib", "must be <= memory_total_mib")
    sec.reject_unknown()
    return gpu


def _clock_reasons(sec: Section) -> int:
    sec._known.add("clock_event_reasons")
    raw = sec.raw.get("clock_event_reasons", 0)
    if raw is None:
        return 0
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        mask = 0
        for name in raw:
            if name not in CLOCK_REASON_NAMES:
                sec.error("clock_event_reasons", f"unknown reason {name!r}")
            else:
                mask |= CLOCK_REASON_NAMES[name]
        return mask
    sec.error("clock_event_reasons", f"must be a bitmask or a list of names, got {raw!r}")
    return 0
