"""GPU checks: one result per (GPU, signal) from an NVML sample, plus the polled Check classes.

The result builders are pure functions of what was read (no I/O, no clock): the component
passes the sample, the latches and the histories it keeps. Condition names are
``gpu/<uuid>/<signal>`` plus ``nvml`` (driver reachable) and ``gpu/inventory``. GPU-fatal
findings gate ``readiness``, ``gpu`` and ``gpu/<uuid>`` (and ``gpu/<mig-uuid>`` of each MIG
instance of that GPU). A signal the hardware does not support is OK / INFO / ``Unmonitored``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.core.values import SERVICE_GPU, SERVICE_READINESS, CheckResult, Severity, gpu_service
from sidecar.gpu.backend import (
    CLOCKS_HW_MASK,
    REBOOT_CLASS_ACTIONS,
    RESET_CLASS_ACTIONS,
    ComputeMode,
    EccCounters,
    GpuInfo,
    MemoryInfo,
    ProcessInfo,
    Reading,
    RecoveryAction,
    RemappedRows,
    SignalError,
    Unsupported,
    compute_mode_name,
    recovery_action_name,
)
from sidecar.gpu.latches import Latch, StoreProblem

if TYPE_CHECKING:
    from sidecar.gpu.component import GpuComponent

MIB = 1024 * 1024
REMAP_UNCORRECTABLE_RMA = 512  # DCGM_LIMIT_MAX_ROW_REMAP_UNCORRECTABLE
UNMONITORED = "Unmonitored"

NVML_CONDITION = "nvml"
INVENTORY_CONDITION = "gpu/inventory"
STATE_CONDITION = "gpu/state"
GPU_GATES = frozenset({SERVICE_READINESS, SERVICE_GPU})


@dataclass(frozen=True, slots=True)
class GpuRef:
    """How results of one GPU are named, labelled and what they gate."""

    uuid: str
    index: int
    gates: frozenset[str]
    labels: Mapping[str, str]

    @classmethod
    def of(cls, info: GpuInfo) -> GpuRef:
        gates = set(GPU_GATES) | {gpu_service(info.uuid)}
        gates |= {gpu_service(i.uuid) for i in info.instances}  # a GPU fault marks its instances
        labels = {"gpu": str(info.index), "uuid": info.uuid}
        if info.mig_enabled:
            labels["mig"] = "true"
        return cls(info.uuid, info.index, frozenset(gates), labels)

    def name(self, signal: str) -> str:
        return f"gpu/{self.uuid}/{signal}"

    def lab(self, signal: str, **extra: str) -> dict[str, str]:
        return {**self.labels, "signal": signal, **extra}

    def ok(
        self,
        signal: str,
        message: str,
        *,
        severity: Severity = Severity.CRITICAL,
        reason: str = "",
        value: float | str | None = None,
    ) -> CheckResult:
        return CheckResult.passed(
            self.name(signal),
            message=message,
            reason=reason,
            labels=self.lab(signal),
            value=value,
            gates=self.gates,
            severity=severity,
        )

    def fail(
        self,
        signal: str,
        reason: str,
        message: str,
        *,
        severity: Severity,
        value: float | str | None = None,
        **extra: str,
    ) -> CheckResult:
        return CheckResult.failed(
            self.name(signal),
            reason,
            message,
            severity=severity,
            labels=self.lab(signal, **extra),
            value=value,
            gates=self.gates,
        )

    def unmonitored(self, signal: str, detail: str = "not supported on this GPU/driver") -> CheckResult:
        return CheckResult.passed(
            self.name(signal),
            message=f"{signal}: {detail}",
            reason=UNMONITORED,
            labels=self.lab(signal),
            gates=self.gates,
            severity=Severity.INFO,
        )

    def unreadable(self, signal: str, err: SignalError, severity: Severity) -> CheckResult:
        return CheckResult.unknown(
            self.name(signal),
            err.reason,
            f"{signal} could not be read: {err.message}",
            severity=severity,
            labels=self.lab(signal),
            gates=self.gates,
        )


def _special(ref: GpuRef, signal: str, reading: Reading[Any], severity: Severity) -> CheckResult | None:
    if isinstance(reading, Unsupported):
        return ref.unmonitored(signal)
    if isinstance(reading, SignalError):
        return ref.unreadable(signal, reading, severity)
    return None


# --- device / lost -----------------------------------------------------------------------------


def lost_result(ref: GpuRef, *, latch: Latch | None, reset_required: str | None) -> CheckResult:
    """``gpu/<uuid>/lost``: the device answers. Lost is node-fatal and sticky (latched)."""
    if latch is not None:
        return ref.fail("lost", "GpuLost", latch.message, severity=Severity.FATAL, scope="node")
    if reset_required is not None:
        return ref.fail(
            "lost", "GpuResetRequired", reset_required, severity=Severity.FATAL, scope="gpu"
        )
    return ref.ok("lost", "GPU answers NVML")


# --- recovery action ---------------------------------------------------------------------------


def recovery_action_result(
    ref: GpuRef, reading: Reading[int], *, multi_gpu_model: bool, multi_node_nvlink: bool
) -> CheckResult:
    """``gpu/<uuid>/recovery_action``: the driver's own verdict (R565+); not ready until none."""
    special = _special(ref, "recovery_action", reading, Severity.CRITICAL)
    if special is not None:
        return special
    assert isinstance(reading, int)
    name = recovery_action_name(reading)
    if reading == RecoveryAction.NONE:
        return ref.ok("recovery_action", "driver requires no recovery action", value=name)
    if reading in REBOOT_CLASS_ACTIONS:
        return ref.fail(
            "recovery_action",
            "RecoveryActionReboot",
            f"driver requires a node reboot (recovery action {name})",
            severity=Severity.FATAL,
            value=name,
            scope="node",
        )
    if reading in RESET_CLASS_ACTIONS:
        return ref.fail(
            "recovery_action",
            "RecoveryActionReset",
            f"driver requires a GPU reset (recovery action {name})",
            severity=Severity.FATAL,
            value=name,
            scope="gpu",
        )
    if reading == RecoveryAction.DRAIN_P2P:
        return ref.fail(
            "recovery_action",
            "RecoveryActionDrainP2P",
            "driver asks to drain peer-to-peer (NVLink) traffic"
            + ("; the model spans GPUs" if multi_gpu_model else "; single-GPU model unaffected"),
            severity=Severity.FATAL if multi_gpu_model else Severity.WARNING,
            value=name,
        )
    if reading == RecoveryAction.RECOVER_IMEX_DOMAIN:
        return ref.fail(
            "recovery_action",
            "RecoveryActionRecoverImex",
            "driver asks to recover the IMEX domain (multi-node NVLink)",
            severity=Severity.FATAL if multi_node_nvlink else Severity.WARNING,
            value=name,
        )
    return ref.fail(
        "recovery_action",
        "RecoveryActionUnknown",
        f"driver reports recovery action {reading}, not known to this sidecar",
        severity=Severity.FATAL,
        value=name,
    )


# --- ECC ---------------------------------------------------------------------------------------


def ecc_result(
    ref: GpuRef,
    reading: Reading[EccCounters],
    *,
    latch: Latch | None,
    contained: bool,
    corrected_increase: int,
    corrected_warn: int,
    corrected_window_s: float,
) -> CheckResult:
    """``gpu/<uuid>/ecc``: uncontained uncorrectable -> FATAL until reset; contained -> WARNING;
    corrected errors over the threshold within the window -> WARNING."""
    if latch is not None:
        return ref.fail("ecc", latch.reason, latch.message, severity=Severity.FATAL)
    special = _special(ref, "ecc", reading, Severity.CRITICAL)
    if special is not None:
        return special
    assert isinstance(reading, EccCounters)
    unc = reading.volatile_uncorrected or 0
    if contained and unc > 0:
        return ref.fail(
            "ecc",
            "EccContained",
            f"{unc} contained uncorrectable ECC error(s) (Xid 94): the affected process must "
            "restart; reset the GPU when convenient",
            severity=Severity.WARNING,
            value=unc,
        )
    if corrected_warn > 0 and corrected_increase >= corrected_warn:
        return ref.fail(
            "ecc",
            "EccCorrectedRate",
            f"{corrected_increase} corrected ECC errors within {corrected_window_s:g}s "
            f"(threshold {corrected_warn})",
            severity=Severity.WARNING,
            value=corrected_increase,
        )
    return ref.ok(
        "ecc",
        f"volatile ECC: {reading.volatile_corrected or 0} corrected, {unc} uncorrected",
        value=unc,
    )


# --- row remapping / page retirement -----------------------------------------------------------


def remap_result(
    ref: GpuRef,
    reading: Reading[RemappedRows],
    retired_pending: Reading[bool],
    *,
    latch: Latch | None,
) -> CheckResult:
    """``gpu/<uuid>/remap``: failure -> FATAL, sticky (RMA); pending -> WARNING."""
    if latch is not None:
        return ref.fail("remap", latch.reason, latch.message, severity=Severity.FATAL)
    if isinstance(reading, RemappedRows):
        if reading.failure:
            return ref.fail(
                "remap",
                "RemapFailure",
                "row remapping failed (RMA criterion)",
                severity=Severity.FATAL,
                value=reading.uncorrectable,
            )
        if reading.pending:
            return ref.fail(
                "remap",
                "RemapPending",
                "row remap pending: reset the GPU when convenient (serving continues)",
                severity=Severity.WARNING,
                value=reading.uncorrectable,
            )
        if reading.uncorrectable >= REMAP_UNCORRECTABLE_RMA:
            return ref.fail(
                "remap",
                "RemapExhausted",
                f"{reading.uncorrectable} rows remapped for uncorrectable errors "
                f"(>= {REMAP_UNCORRECTABLE_RMA})",
                severity=Severity.WARNING,
                value=reading.uncorrectable,
            )
    if retired_pending is True:
        return ref.fail(
            "remap",
            "RetiredPagesPending",
            "page retirement pending: reset the GPU when convenient",
            severity=Severity.WARNING,
        )
    if isinstance(reading, RemappedRows):
        return ref.ok(
            "remap",
            f"{reading.correctable} correctable, {reading.uncorrectable} uncorrectable rows "
            "remapped",
            value=reading.uncorrectable,
        )
    if isinstance(retired_pending, bool):
        return ref.ok("remap", "no page retirement pending")
    special = _special(ref, "remap", reading, Severity.CRITICAL)
    assert special is not None
    return special


# --- thermal -----------------------------------------------------------------------------------


def thermal_result(
    ref: GpuRef,
    temperature: Reading[int],
    slowdown_c: float | None,
    shutdown_c: float | None,
    *,
    clock_reasons: Reading[int],
    hw_slowdown_for_s: float | None,
    sustain_s: float,
) -> CheckResult:
    """``gpu/<uuid>/thermal``: shutdown threshold -> FATAL; slowdown threshold or sustained
    hardware slowdown clock-event reasons -> WARNING."""
    special = _special(ref, "thermal", temperature, Severity.WARNING)
    if special is not None:
        return special
    assert isinstance(temperature, int)
    if shutdown_c is not None and temperature >= shutdown_c:
        return ref.fail(
            "thermal",
            "ThermalShutdown",
            f"GPU at {temperature} C, at or above the shutdown threshold {shutdown_c:g} C",
            severity=Severity.FATAL,
            value=temperature,
        )
    if slowdown_c is not None and temperature >= slowdown_c:
        return ref.fail(
            "thermal",
            "ThermalSlowdown",
            f"GPU at {temperature} C, at or above the slowdown threshold {slowdown_c:g} C",
            severity=Severity.WARNING,
            value=temperature,
        )
    if (
        isinstance(clock_reasons, int)
        and clock_reasons & CLOCKS_HW_MASK
        and hw_slowdown_for_s is not None
        and hw_slowdown_for_s >= sustain_s
    ):
        return ref.fail(
            "thermal",
            "ClocksHwSlowdown",
            f"hardware clock slowdown (reasons 0x{clock_reasons:x}) for {hw_slowdown_for_s:.0f}s",
            severity=Severity.WARNING,
            value=temperature,
        )
    return ref.ok("thermal", f"GPU at {temperature} C", value=temperature)


# --- memory, processes, compute mode, PCIe, InfoROM ------------------------------------------


def memory_result(
    ref: GpuRef,
    reading: Reading[MemoryInfo],
    processes: Reading[tuple[ProcessInfo, ...]],
    *,
    required_mib: int,
    exclusive_process: bool,
) -> CheckResult:
    """``gpu/<uuid>/memory``: numbers; the sidecar's own needs not fitting is a WARNING (low free
    memory alone is normal: inference servers preallocate)."""
    special = _special(ref, "memory", reading, Severity.WARNING)
    if special is not None:
        return special
    assert isinstance(reading, MemoryInfo)
    procs = f", {len(processes)} compute process(es)" if isinstance(processes, tuple) else ""
    numbers = (
        f"{reading.used // MIB} MiB used, {reading.free // MIB} MiB free of "
        f"{reading.total // MIB} MiB{procs}"
    )
    if required_mib > 0 and not exclusive_process and reading.free < required_mib * MIB:
        return ref.fail(
            "memory",
            "MemoryInsufficient",
            f"the sidecar needs {required_mib} MiB for its context and canary; {numbers}",
            severity=Severity.WARNING,
            value=reading.free // MIB,
        )
    return ref.ok("memory", numbers, severity=Severity.WARNING, value=reading.free // MIB)


def compute_mode_result(ref: GpuRef, reading: Reading[int]) -> CheckResult:
    """``gpu/<uuid>/compute_mode``: reported (EXCLUSIVE_PROCESS keeps the canary off the GPU)."""
    special = _special(ref, "compute_mode", reading, Severity.INFO)
    if special is not None:
        return special
    assert isinstance(reading, int)
    name = compute_mode_name(reading)
    if reading == ComputeMode.PROHIBITED:
        return ref.fail(
            "compute_mode",
            "ComputeModeProhibited",
            "compute mode PROHIBITED: no process can create a context",
            severity=Severity.WARNING,
            value=name,
        )
    if reading == ComputeMode.EXCLUSIVE_PROCESS:
        return ref.ok(
            "compute_mode",
            "compute mode EXCLUSIVE_PROCESS: the canary creates no CUDA context",
            severity=Severity.INFO,
            reason="ExclusiveProcess",
            value=name,
        )
    return ref.ok("compute_mode", f"compute mode {name.upper()}", severity=Severity.INFO, value=name)


def pcie_result(
    ref: GpuRef, reading: Reading[int], *, increase: int, warn: int, window_s: float
) -> CheckResult:
    """``gpu/<uuid>/pcie``: replay count rising faster than the threshold -> WARNING."""
    special = _special(ref, "pcie", reading, Severity.WARNING)
    if special is not None:
        return special
    if warn > 0 and increase >= warn:
        return ref.fail(
            "pcie",
            "PcieReplayRate",
            f"{increase} PCIe replays within {window_s:g}s (threshold {warn})",
            severity=Severity.WARNING,
            value=increase,
        )
    return ref.ok("pcie", f"PCIe replay counter {reading}", severity=Severity.WARNING, value=increase)


def inforom_result(ref: GpuRef, reading: Reading[bool]) -> CheckResult:
    """``gpu/<uuid>/inforom``: invalid -> WARNING."""
    special = _special(ref, "inforom", reading, Severity.WARNING)
    if special is not None:
        return special
    if reading is False:
        return ref.fail(
            "inforom", "InforomInvalid", "InfoROM is corrupted", severity=Severity.WARNING
        )
    return ref.ok("inforom", "InfoROM valid", severity=Severity.WARNING)


def events_result(ref: GpuRef, *, registered: int, unsupported: int, error: str) -> CheckResult:
    """``gpu/<uuid>/events``: whether Xid / ECC events are delivered (unmonitored otherwise)."""
    if error:
        return CheckResult.unknown(
            ref.name("events"),
            "EventRegistrationFailed",
            f"NVML events could not be registered: {error}",
            severity=Severity.WARNING,
            labels=ref.lab("events"),
            gates=ref.gates,
        )
    if registered == 0:
        return ref.unmonitored("events", "Xid / ECC events not supported (polling only)")
    extra = f" (unsupported mask 0x{unsupported:x})" if unsupported else ""
    return ref.ok(
        "events",
        f"listening for NVML events mask 0x{registered:x}{extra}",
        severity=Severity.INFO,
        value=registered,
    )


# --- process-wide conditions -------------------------------------------------------------------


def nvml_ok(driver_version: str, backend_kind: str) -> CheckResult:
    # the simulated driver's version text already says "(simulated)": say it once
    kind = f"({backend_kind})"
    driver = driver_version if driver_version.endswith(kind) else f"{driver_version} {kind}"
    return CheckResult.passed(
        NVML_CONDITION,
        message=f"NVML reachable, driver {driver}",
        labels={"signal": "nvml", "driver": driver_version, "backend": backend_kind},
        gates=GPU_GATES,
    )


def nvml_failed(reason: str, text: str, *, hung: bool = False, uuid: str = "") -> CheckResult:
    """``nvml`` failing: the GPU layer cannot vouch for anything (CRITICAL, fail closed)."""
    labels = {"signal": "nvml"}
    if uuid:
        labels["uuid"] = uuid
    if hung:
        return CheckResult.unknown(
            NVML_CONDITION,
            reason,
            text,
            severity=Severity.CRITICAL,
            labels=labels,
            gates=GPU_GATES,
        )
    return CheckResult.failed(
        NVML_CONDITION, reason, text, severity=Severity.CRITICAL, labels=labels, gates=GPU_GATES
    )


def inventory_result(
    present: Sequence[GpuInfo], expected_uuids: Sequence[str], expected_count: int | None
) -> CheckResult:
    """``gpu/inventory``: every expected GPU is visible (a GPU expected but missing is CRITICAL)."""
    uuids = [g.uuid for g in present if not g.lost]
    labels = {"signal": "inventory", "present": str(len(uuids))}
    missing = [u for u in expected_uuids if u not in uuids]
    if missing:
        return CheckResult.failed(
            INVENTORY_CONDITION,
            "GpuMissing",
            f"expected GPU(s) not visible: {', '.join(missing)}",
            labels={**labels, "missing": ",".join(missing)},
            value=len(uuids),
            gates=GPU_GATES,
        )
    if expected_count is not None and len(uuids) < expected_count:
        return CheckResult.failed(
            INVENTORY_CONDITION,
            "GpuMissing",
            f"{len(uuids)} GPU(s) visible, {expected_count} expected",
            labels=labels,
            value=len(uuids),
            gates=GPU_GATES,
        )
    if not uuids:
        return CheckResult.failed(
            INVENTORY_CONDITION,
            "GpuMissing",
            "no GPU visible to NVML in this container",
            labels=labels,
            value=0,
            gates=GPU_GATES,
        )
    return CheckResult.passed(
        INVENTORY_CONDITION,
        message=f"{len(uuids)} GPU(s) visible: {', '.join(uuids)}",
        labels=labels,
        value=len(uuids),
        gates=GPU_GATES,
    )


def state_file_result(problem: StoreProblem | None) -> CheckResult:
    """``gpu/state``: the latch store can be trusted. A corrupt, unreadable or unwritable store
    gates readiness (CRITICAL): a fatal latch it held or should hold may be lost, and NVML does
    not replay past events (see :mod:`sidecar.gpu.latches` for what clears each reason)."""
    if problem is not None:
        return CheckResult.failed(
            STATE_CONDITION,
            problem.reason,
            f"{problem.message}; fatal GPU faults may be missing from the verdict",
            severity=Severity.CRITICAL,
            labels={"signal": "state"},
            gates=GPU_GATES,
        )
    return CheckResult.passed(
        STATE_CONDITION,
        message="latch state file usable",
        labels={"signal": "state"},
        severity=Severity.CRITICAL,
        gates=GPU_GATES,
    )


# --- polled checks -----------------------------------------------------------------------------


class GpuPollCheck:
    """Samples every GPU through the backend (off the event loop, with the NVML watchdog)."""

    def __init__(self, component: GpuComponent) -> None:
        self._component = component
        cfg = component.config
        self.name = "gpu"
        self.interval_s = cfg.poll_interval_s
        # worst case: one call waits for an event-driven refresh, then one call hangs
        self.timeout_s = 2 * cfg.nvml_call_timeout_s + 1.0

    async def run(self) -> Sequence[CheckResult]:
        return await self._component.refresh(submit=False)

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [
            nvml_failed(
                "NvmlHung", f"GPU poll still running after {elapsed_s:.1f}s", hung=True
            )
        ]


class InforomCheck:
    """Validates each GPU's InfoROM (slow: ~70 ms per GPU), rarely."""

    def __init__(self, component: GpuComponent) -> None:
        self._component = component
        cfg = component.config
        self.name = "gpu/inforom"
        self.interval_s = cfg.inforom_interval_s
        self.timeout_s = 2 * cfg.nvml_call_timeout_s + 1.0

    async def run(self) -> Sequence[CheckResult]:
        return await self._component.check_inforom()

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return []
