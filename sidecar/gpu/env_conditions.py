"""GPU conditions of the environment the device runs in: ``thermal``, ``memory``,
``compute_mode``, ``pcie``, ``inforom``, ``events``. Pure builders (see
:mod:`sidecar.gpu.conditions`); none of them is FATAL but the thermal shutdown threshold.
"""

from __future__ import annotations

from sidecar.core.values import CheckResult, Severity
from sidecar.gpu.backend import (
    CLOCKS_HW_MASK,
    ComputeMode,
    MemoryInfo,
    ProcessInfo,
    Reading,
    compute_mode_name,
)
from sidecar.gpu.conditions import GpuRef, special_reading

MIB = 1024 * 1024


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
    special = special_reading(ref, "thermal", temperature, Severity.WARNING)
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
    special = special_reading(ref, "memory", reading, Severity.WARNING)
    if special is not None:
        return special
    assert isinstance(reading, MemoryInfo)
    procs = f", {len(processes)} compute process(es)" if isinstance(processes, tuple) else ""
    numbers = (
        f"{reading.used // MIB} MiB used, {reading.free // MIB} MiB free of {reading.total // MIB} MiB{procs}"
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
    special = special_reading(ref, "compute_mode", reading, Severity.INFO)
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
    special = special_reading(ref, "pcie", reading, Severity.WARNING)
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
    special = special_reading(ref, "inforom", reading, Severity.WARNING)
    if special is not None:
        return special
    if reading is False:
        return ref.fail("inforom", "InforomInvalid", "InfoROM is corrupted", severity=Severity.WARNING)
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
