"""The pure GPU condition builders, one table row per rule: (what was read) -> (status, severity,
reason). The rows are the fault policy of ``../shared/reference/gpu-health-anchors.md`` (b)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.gpu.backend import (
    CLOCKS_HW_THERMAL_SLOWDOWN,
    UNSUPPORTED,
    ComputeMode,
    EccCounters,
    GpuInfo,
    MemoryInfo,
    MigInstance,
    ProcessInfo,
    RecoveryAction,
    RemappedRows,
    SignalError,
)
from sidecar.gpu.conditions import GpuRef, ecc_result, lost_result, recovery_action_result, remap_result
from sidecar.gpu.env_conditions import (
    compute_mode_result,
    events_result,
    inforom_result,
    memory_result,
    pcie_result,
    thermal_result,
)
from sidecar.gpu.latches import StoreProblem
from sidecar.gpu.latchstate import Latch
from sidecar.gpu.process_conditions import inventory_result, nvml_failed, nvml_ok, state_file_result
from sidecar.gpu.xid import XidClass
from sidecar.gpu.xid_conditions import XidRecord, xid_result

OK, FAIL, UNKNOWN = CheckStatus.OK, CheckStatus.FAIL, CheckStatus.UNKNOWN
INFO, WARNING, CRITICAL, FATAL = Severity.INFO, Severity.WARNING, Severity.CRITICAL, Severity.FATAL
MIB = 1024 * 1024

REF = GpuRef.of(GpuInfo(index=0, uuid="GPU-t", name="T"))
ERR = SignalError("NvmlUnknownError", "driver said no")
LOST = Latch("lost", "GpuLost", "fell off", scope="node")
ECC_LATCH = Latch("ecc", "EccUncorrectable", "rose 0 -> 1")
REMAP_LATCH = Latch("remap", "RemapFailure", "failed")


def ecc(unc: int = 0, cor: int = 0) -> EccCounters:
    return EccCounters(volatile_corrected=cor, volatile_uncorrected=unc)


def mem(free_mib: int, total_mib: int = 80_000) -> MemoryInfo:
    return MemoryInfo(total=total_mib * MIB, used=(total_mib - free_mib) * MIB, free=free_mib * MIB)


Row = tuple[str, Callable[[], CheckResult], CheckStatus, Severity, str]

ROWS: list[Row] = [
    # --- lost ----------------------------------------------------------------------------------
    ("lost/answers", lambda: lost_result(REF, latch=None, reset_required=None), OK, CRITICAL, ""),
    ("lost/latched", lambda: lost_result(REF, latch=LOST, reset_required=None), FAIL, FATAL, "GpuLost"),
    (
        "lost/reset-required",
        lambda: lost_result(REF, latch=None, reset_required="needs reset"),
        FAIL,
        FATAL,
        "GpuResetRequired",
    ),
    ("lost/latch-wins", lambda: lost_result(REF, latch=LOST, reset_required="x"), FAIL, FATAL, "GpuLost"),
    # --- recovery action -----------------------------------------------------------------------
    *[
        (
            f"recovery/{action.name.lower()}{'/multi' if multi else ''}",
            (
                lambda a=action, m=multi: recovery_action_result(
                    REF, a, multi_gpu_model=m, multi_node_nvlink=m
                )
            ),
            status,
            sev,
            reason,
        )
        for action, multi, status, sev, reason in [
            (RecoveryAction.NONE, False, OK, CRITICAL, ""),
            (RecoveryAction.GPU_RESET, False, FAIL, FATAL, "RecoveryActionReset"),
            (RecoveryAction.DRAIN_AND_RESET, False, FAIL, FATAL, "RecoveryActionReset"),
            (RecoveryAction.BUS_RESET, False, FAIL, FATAL, "RecoveryActionReset"),
            (RecoveryAction.NODE_REBOOT, False, FAIL, FATAL, "RecoveryActionReboot"),
            (RecoveryAction.SYSTEM_REBOOT, False, FAIL, FATAL, "RecoveryActionReboot"),
            (RecoveryAction.DRAIN_P2P, False, FAIL, WARNING, "RecoveryActionDrainP2P"),
            (RecoveryAction.DRAIN_P2P, True, FAIL, FATAL, "RecoveryActionDrainP2P"),
            (RecoveryAction.RECOVER_IMEX_DOMAIN, False, FAIL, WARNING, "RecoveryActionRecoverImex"),
            (RecoveryAction.RECOVER_IMEX_DOMAIN, True, FAIL, FATAL, "RecoveryActionRecoverImex"),
        ]
    ],
    (
        "recovery/unknown-value",
        lambda: recovery_action_result(REF, 99, multi_gpu_model=False, multi_node_nvlink=False),
        FAIL,
        FATAL,
        "RecoveryActionUnknown",
    ),
    (
        "recovery/unsupported",
        lambda: recovery_action_result(REF, UNSUPPORTED, multi_gpu_model=False, multi_node_nvlink=False),
        OK,
        INFO,
        "Unmonitored",
    ),
    (
        "recovery/unreadable",
        lambda: recovery_action_result(REF, ERR, multi_gpu_model=False, multi_node_nvlink=False),
        UNKNOWN,
        CRITICAL,
        "NvmlUnknownError",
    ),
    # --- ECC -----------------------------------------------------------------------------------
    *[
        (f"ecc/{name}", (lambda kw=kw: ecc_result(REF, **kw)), status, sev, reason)  # type: ignore[arg-type]
        for name, kw, status, sev, reason in [
            ("clean", {"reading": ecc()}, OK, CRITICAL, ""),
            ("latched", {"reading": ecc(1), "latch": ECC_LATCH}, FAIL, FATAL, "EccUncorrectable"),
            (
                "latched-unsupported",
                {"reading": UNSUPPORTED, "latch": ECC_LATCH},
                FAIL,
                FATAL,
                "EccUncorrectable",
            ),
            ("contained", {"reading": ecc(2), "contained": True}, FAIL, WARNING, "EccContained"),
            ("contained-but-zero", {"reading": ecc(0), "contained": True}, OK, CRITICAL, ""),
            (
                "corrected-at-threshold",
                {"reading": ecc(cor=500), "corrected_increase": 100},
                FAIL,
                WARNING,
                "EccCorrectedRate",
            ),
            ("corrected-below", {"reading": ecc(cor=500), "corrected_increase": 99}, OK, CRITICAL, ""),
            (
                "corrected-warn-off",
                {"reading": ecc(cor=500), "corrected_increase": 10**6, "corrected_warn": 0},
                OK,
                CRITICAL,
                "",
            ),
            ("unsupported", {"reading": UNSUPPORTED}, OK, INFO, "Unmonitored"),
            ("unreadable", {"reading": ERR}, UNKNOWN, CRITICAL, "NvmlUnknownError"),
        ]
        for kw in [
            {
                "latch": None,
                "contained": False,
                "corrected_increase": 0,
                "corrected_warn": 100,
                "corrected_window_s": 3600.0,
                **kw,
            }
        ]
    ],
    # --- remap ---------------------------------------------------------------------------------
    *[
        (f"remap/{name}", (lambda r=r, p=p, x=x: remap_result(REF, r, p, latch=x)), status, sev, reason)
        for name, r, p, x, status, sev, reason in [
            ("clean", RemappedRows(), False, None, OK, CRITICAL, ""),
            ("latched", RemappedRows(), False, REMAP_LATCH, FAIL, FATAL, "RemapFailure"),
            ("failure", RemappedRows(failure=True), False, None, FAIL, FATAL, "RemapFailure"),
            ("pending", RemappedRows(pending=True), False, None, FAIL, WARNING, "RemapPending"),
            ("exhausted", RemappedRows(uncorrectable=512), False, None, FAIL, WARNING, "RemapExhausted"),
            ("just-below-rma", RemappedRows(uncorrectable=511), False, None, OK, CRITICAL, ""),
            ("retired-pending", UNSUPPORTED, True, None, FAIL, WARNING, "RetiredPagesPending"),
            ("retirement-only", UNSUPPORTED, False, None, OK, CRITICAL, ""),
            ("unsupported", UNSUPPORTED, UNSUPPORTED, None, OK, INFO, "Unmonitored"),
            ("unreadable", ERR, UNSUPPORTED, None, UNKNOWN, CRITICAL, "NvmlUnknownError"),
        ]
    ],
    # --- thermal -------------------------------------------------------------------------------
    *[
        (
            f"thermal/{name}",
            (
                lambda t=t, c=c, f=f: thermal_result(
                    REF, t, 87.0, 92.0, clock_reasons=c, hw_slowdown_for_s=f, sustain_s=30.0
                )
            ),
            status,
            sev,
            reason,
        )
        for name, t, c, f, status, sev, reason in [
            ("cool", 40, 0, None, OK, CRITICAL, ""),
            ("at-shutdown", 92, 0, None, FAIL, FATAL, "ThermalShutdown"),
            ("at-slowdown", 87, 0, None, FAIL, WARNING, "ThermalSlowdown"),
            ("below-slowdown", 86, 0, None, OK, CRITICAL, ""),
            (
                "hw-slowdown-sustained",
                50,
                CLOCKS_HW_THERMAL_SLOWDOWN,
                30.0,
                FAIL,
                WARNING,
                "ClocksHwSlowdown",
            ),
            ("hw-slowdown-brief", 50, CLOCKS_HW_THERMAL_SLOWDOWN, 29.9, OK, CRITICAL, ""),
            ("benign-clock-reason", 50, 0x4, 999.0, OK, CRITICAL, ""),
            ("unsupported", UNSUPPORTED, 0, None, OK, INFO, "Unmonitored"),
            ("unreadable", ERR, 0, None, UNKNOWN, WARNING, "NvmlUnknownError"),
        ]
    ],
    (
        "thermal/no-thresholds",
        lambda: thermal_result(REF, 120, None, None, clock_reasons=0, hw_slowdown_for_s=None, sustain_s=30.0),
        OK,
        CRITICAL,
        "",
    ),
    # --- memory --------------------------------------------------------------------------------
    *[
        (
            f"memory/{name}",
            (
                lambda r=r, x=x, n=n: memory_result(
                    REF, r, (ProcessInfo(1),), required_mib=n, exclusive_process=x
                )
            ),
            status,
            sev,
            reason,
        )
        for name, r, x, n, status, sev, reason in [
            ("room", mem(1000), False, 640, OK, WARNING, ""),
            ("too-little", mem(639), False, 640, FAIL, WARNING, "MemoryInsufficient"),
            ("too-little-exclusive", mem(10), True, 640, OK, WARNING, ""),
            ("nothing-required", mem(0), False, 0, OK, WARNING, ""),
            ("unsupported", UNSUPPORTED, False, 640, OK, INFO, "Unmonitored"),
        ]
    ],
    # --- compute mode, PCIe, InfoROM, events ---------------------------------------------------
    ("mode/default", lambda: compute_mode_result(REF, ComputeMode.DEFAULT), OK, INFO, ""),
    (
        "mode/prohibited",
        lambda: compute_mode_result(REF, ComputeMode.PROHIBITED),
        FAIL,
        WARNING,
        "ComputeModeProhibited",
    ),
    (
        "mode/exclusive-process",
        lambda: compute_mode_result(REF, ComputeMode.EXCLUSIVE_PROCESS),
        OK,
        INFO,
        "ExclusiveProcess",
    ),
    (
        "pcie/rate",
        lambda: pcie_result(REF, 40, increase=8, warn=8, window_s=60.0),
        FAIL,
        WARNING,
        "PcieReplayRate",
    ),
    ("pcie/slow", lambda: pcie_result(REF, 40, increase=7, warn=8, window_s=60.0), OK, WARNING, ""),
    ("pcie/warn-off", lambda: pcie_result(REF, 40, increase=99, warn=0, window_s=60.0), OK, WARNING, ""),
    (
        "pcie/unsupported",
        lambda: pcie_result(REF, UNSUPPORTED, increase=0, warn=8, window_s=60.0),
        OK,
        INFO,
        "Unmonitored",
    ),
    ("inforom/valid", lambda: inforom_result(REF, True), OK, WARNING, ""),
    ("inforom/invalid", lambda: inforom_result(REF, False), FAIL, WARNING, "InforomInvalid"),
    ("inforom/unsupported", lambda: inforom_result(REF, UNSUPPORTED), OK, INFO, "Unmonitored"),
    ("events/listening", lambda: events_result(REF, registered=0xB, unsupported=0, error=""), OK, INFO, ""),
    (
        "events/none",
        lambda: events_result(REF, registered=0, unsupported=0xB, error=""),
        OK,
        INFO,
        "Unmonitored",
    ),
    (
        "events/failed",
        lambda: events_result(REF, registered=0, unsupported=0, error="boom"),
        UNKNOWN,
        WARNING,
        "EventRegistrationFailed",
    ),
    # --- process-wide --------------------------------------------------------------------------
    ("nvml/ok", lambda: nvml_ok("580.65.06", "nvml"), OK, CRITICAL, ""),
    (
        "nvml/unavailable",
        lambda: nvml_failed("DriverNotLoaded", "no driver"),
        FAIL,
        CRITICAL,
        "DriverNotLoaded",
    ),
    ("nvml/hung", lambda: nvml_failed("NvmlHung", "stuck", hung=True), UNKNOWN, CRITICAL, "NvmlHung"),
    ("state/usable", lambda: state_file_result(None), OK, CRITICAL, ""),
    (
        "state/corrupt",
        lambda: state_file_result(StoreProblem("LatchStoreCorrupt", "bad")),
        FAIL,
        CRITICAL,
        "LatchStoreCorrupt",
    ),
]

A, B = GpuInfo(0, "GPU-a"), GpuInfo(1, "GPU-b")
INVENTORY_ROWS = [
    ("all-there", [A, B], ("GPU-a", "GPU-b"), 2, OK, ""),
    ("expected-uuid-missing", [A], ("GPU-a", "GPU-b"), None, FAIL, "GpuMissing"),
    ("count-short", [A], (), 2, FAIL, "GpuMissing"),
    ("lost-does-not-count", [A, GpuInfo(1, "GPU-b", lost=True)], (), 2, FAIL, "GpuMissing"),
    ("none-visible", [], (), None, FAIL, "GpuMissing"),
    ("no-expectation", [A], (), None, OK, ""),
]


@pytest.mark.parametrize(("row", "build", "status", "severity", "reason"), ROWS, ids=[r[0] for r in ROWS])
def test_condition_rule(
    row: str, build: Callable[[], CheckResult], status: CheckStatus, severity: Severity, reason: str
) -> None:
    r = build()
    assert (r.status, r.severity, r.reason) == (status, severity, reason), f"{row}: {r.message}"


@pytest.mark.parametrize(
    ("row", "present", "uuids", "count", "status", "reason"),
    INVENTORY_ROWS,
    ids=[r[0] for r in INVENTORY_ROWS],
)
def test_inventory_rule(
    row: str,
    present: list[GpuInfo],
    uuids: tuple[str, ...],
    count: int | None,
    status: CheckStatus,
    reason: str,
) -> None:
    r = inventory_result(present, uuids, count)
    assert (r.status, r.severity, r.reason) == (status, CRITICAL, reason), r.message


def rec(code: int, cls: XidClass, at: float, *, fatal: bool = False) -> XidRecord:
    return XidRecord(code, cls, at, wall=1000.0 + at, gpu_instance_id=0, compute_instance_id=0, fatal=fatal)


XID79 = Latch("xid", "XidFatal79", "Xid 79", scope="node", code=79, since=20.0)
XID48 = Latch("xid", "XidGpuReset48", "Xid 48", scope="gpu", code=48, since=10.0)
XID_ROWS = [
    # (row, latches, recent, now, status, severity, reason)
    ("clean", [], [], 100.0, OK, CRITICAL, ""),
    ("fatal-latched", [XID48], [], 100.0, FAIL, FATAL, "XidGpuReset48"),
    ("node-fatal-first", [XID48, XID79], [], 100.0, FAIL, FATAL, "XidFatal79"),
    ("other-kinds-ignored", [ECC_LATCH, LOST], [], 100.0, OK, CRITICAL, ""),
    ("process-in-window", [], [rec(31, XidClass.PROCESS, 0.0)], 300.0, FAIL, WARNING, "XidProcess31"),
    ("process-out-of-window", [], [rec(31, XidClass.PROCESS, 0.0)], 300.1, OK, CRITICAL, ""),
    ("info-only", [], [rec(45, XidClass.INFO, 0.0)], 1.0, FAIL, INFO, "XidInfo45"),
    (
        "warning-beats-info",
        [],
        [rec(45, XidClass.INFO, 2.0), rec(63, XidClass.WARNING, 1.0)],
        3.0,
        FAIL,
        WARNING,
        "XidWarning63",
    ),
    (
        "latest-of-equal-severity",
        [],
        [rec(31, XidClass.PROCESS, 1.0), rec(13, XidClass.PROCESS, 2.0)],
        3.0,
        FAIL,
        WARNING,
        "XidProcess13",
    ),
    (
        "fatal-records-are-the-latches'",
        [],
        [rec(79, XidClass.NODE_FATAL, 0.0, fatal=True)],
        1.0,
        OK,
        CRITICAL,
        "",
    ),
    ("ignored-class", [], [rec(13, XidClass.IGNORE, 0.0)], 1.0, OK, CRITICAL, ""),
    ("latch-beats-recent", [XID48], [rec(31, XidClass.PROCESS, 0.0)], 1.0, FAIL, FATAL, "XidGpuReset48"),
]


@pytest.mark.parametrize(
    ("row", "latches", "recent", "now", "status", "severity", "reason"),
    XID_ROWS,
    ids=[r[0] for r in XID_ROWS],
)
def test_xid_rule(
    row: str,
    latches: list[Latch],
    recent: list[XidRecord],
    now: float,
    status: CheckStatus,
    severity: Severity,
    reason: str,
) -> None:
    r = xid_result(REF, latches, recent, now=now, window_s=300.0)
    assert (r.status, r.severity, r.reason) == (status, severity, reason), r.message


def test_a_gpu_fault_gates_the_gpu_and_its_mig_instances() -> None:
    """A result of a MIG-enabled GPU gates readiness, gpu, gpu/<uuid> and each instance."""
    info = GpuInfo(
        0, "GPU-m", mig_enabled=True, instances=(MigInstance("MIG-1", 1, 0), MigInstance("MIG-2", 2, 0))
    )
    r = lost_result(GpuRef.of(info), latch=LOST, reset_required=None)
    assert r.gates == {"readiness", "gpu", "gpu/GPU-m", "gpu/MIG-1", "gpu/MIG-2"}
    assert r.name == "gpu/GPU-m/lost" and r.labels["mig"] == "true" and r.labels["scope"] == "node"
