"""Process-wide GPU conditions: ``nvml`` (the driver answers), ``gpu/inventory`` (every
expected GPU is visible) and ``gpu/state`` (the latch store can be trusted). Pure builders.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.core.values import CheckResult, Severity
from sidecar.gpu.backend import GpuInfo
from sidecar.gpu.conditions import GPU_GATES
from sidecar.gpu.latches import StoreProblem

NVML_CONDITION = "nvml"
INVENTORY_CONDITION = "gpu/inventory"
STATE_CONDITION = "gpu/state"


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
