"""The ``gpu/<uuid>/xid`` condition: fatal Xid latches first, then recent non-fatal Xids.

GPU-fatal and node-fatal Xids are latched (persisted) and FATAL until a reset is observed.
Process-level, warning-class and unknown Xids are reported as WARNING for
``xid_report_window`` (they never gate readiness); informational ones as INFO.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.core.values import CheckResult, Severity
from sidecar.gpu.conditions import GpuRef
from sidecar.gpu.latches import Latch
from sidecar.gpu.xid import XidClass, xid_reason


@dataclass(frozen=True, slots=True)
class XidRecord:
    """One Xid seen by the listener (kept in memory for the report window)."""

    code: int
    cls: XidClass
    at: float  # monotonic seconds
    wall: float
    gpu_instance_id: int
    compute_instance_id: int
    fatal: bool


_NONFATAL_SEVERITY = {
    XidClass.PROCESS: Severity.WARNING,
    XidClass.WARNING: Severity.WARNING,
    XidClass.UNKNOWN: Severity.WARNING,
    XidClass.NVLINK: Severity.WARNING,
    XidClass.INFO: Severity.INFO,
}


def xid_result(
    ref: GpuRef, latches: Iterable[Latch], recent: Sequence[XidRecord], *, now: float, window_s: float
) -> CheckResult:
    """The Xid condition of one GPU from its latches and its recent Xid records."""
    fatal = sorted((x for x in latches if x.kind == "xid"), key=lambda x: (x.scope != "node", x.since))
    if fatal:
        first = fatal[0]
        codes = ", ".join(str(x.code) for x in fatal)
        return ref.fail(
            "xid",
            first.reason,
            f"{first.message} (fatal Xid(s) {codes}; waiting for evidence of a reset)",
            severity=Severity.FATAL,
            value=first.code,
            scope=first.scope,
            code=str(first.code),
        )
    live = [r for r in recent if not r.fatal and now - r.at <= window_s and r.cls in _NONFATAL_SEVERITY]
    if live:
        top = max(live, key=lambda r: (_NONFATAL_SEVERITY[r.cls], r.at))
        codes = ", ".join(str(c) for c in sorted({r.code for r in live}))
        return ref.fail(
            "xid",
            xid_reason(top.code, top.cls),
            f"Xid {top.code} ({top.cls.value}): {len(live)} event(s) in the last {window_s:g}s, "
            f"codes {codes}; readiness unchanged",
            severity=_NONFATAL_SEVERITY[top.cls],
            value=top.code,
            code=str(top.code),
            xid_class=top.cls.value,
        )
    return ref.ok("xid", "no Xid requiring action")
