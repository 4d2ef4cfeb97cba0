"""GPU conditions of the device itself: how results are named (:class:`GpuRef`), and the
builders of the signals that can find a GPU unusable: ``lost``, ``recovery_action``, ``ecc``,
``remap``.

Condition builders (here, :mod:`sidecar.gpu.env_conditions`, :mod:`sidecar.gpu.process_conditions`
and :mod:`sidecar.gpu.xid_conditions`) are pure functions of what was read (no I/O, no clock): the
tracker (:mod:`sidecar.gpu.tracker`) passes the sample, the latches and the histories it keeps.
Condition names are ``gpu/<uuid>/<signal>`` plus ``nvml`` (driver reachable), ``gpu/inventory``
and ``gpu/state``. GPU-fatal findings gate ``readiness``, ``gpu`` and ``gpu/<uuid>`` (and
``gpu/<mig-uuid>`` of each MIG instance of that GPU). A signal the hardware does not support is
OK / INFO / ``Unmonitored``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.core.values import SERVICE_GPU, SERVICE_READINESS, CheckResult, Severity, gpu_service
from sidecar.gpu.backend import (
    REBOOT_CLASS_ACTIONS,
    RESET_CLASS_ACTIONS,
    EccCounters,
    GpuInfo,
    Reading,
    RecoveryAction,
    RemappedRows,
    SignalError,
    Unsupported,
    recovery_action_name,
)
from sidecar.gpu.latchstate import Latch

REMAP_UNCORRECTABLE_RMA = 512  # DCGM_LIMIT_MAX_ROW_REMAP_UNCORRECTABLE
UNMONITORED = "Unmonitored"

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


def special_reading(
    ref: GpuRef, signal: str, reading: Reading[Any], severity: Severity
) -> CheckResult | None:
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
        return ref.fail("lost", "GpuResetRequired", reset_required, severity=Severity.FATAL, scope="gpu")
    return ref.ok("lost", "GPU answers NVML")


# --- recovery action ---------------------------------------------------------------------------


def recovery_action_result(
    ref: GpuRef, reading: Reading[int], *, multi_gpu_model: bool, multi_node_nvlink: bool
) -> CheckResult:
    """``gpu/<uuid>/recovery_action``: the driver's own verdict (R565+); not ready until none."""
    special = special_reading(ref, "recovery_action", reading, Severity.CRITICAL)
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
    special = special_reading(ref, "ecc", reading, Severity.CRITICAL)
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
            f"{reading.correctable} correctable, {reading.uncorrectable} uncorrectable rows remapped",
            value=reading.uncorrectable,
        )
    if isinstance(retired_pending, bool):
        return ref.ok("remap", "no page retirement pending")
    special = special_reading(ref, "remap", reading, Severity.CRITICAL)
    assert special is not None
    return special
