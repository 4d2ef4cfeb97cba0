"""Xid classification, derived from NVIDIA's Xid catalogue "Resolution Bucket (Immediate Action)".

Classes (see ``../shared/reference/gpu-health-anchors.md`` section 4 and policy (b)):

- ``node_fatal``: RESTART_BM / RESTART_VM (79 fallen off the bus, 151, 168) -> FATAL, sticky.
- ``gpu_fatal``: RESET_GPU and WORKFLOW_XID_48 (48, 95, 109, 119, 120 ...) -> FATAL until a
  reset is observed.
- ``nvlink``: NVLink workflows (74, 144-150): FATAL only when the model spans GPUs, else warning.
- ``process``: RESTART_APP (13, 31, 32, 43, 68, 69, 94 ...): the faulting process is affected,
  not the GPU; reported, readiness unchanged (the workload probe decides about the server).
- ``warning``: trend signals (63 row-remap event, 92 SBE storm, 157).
- ``info``: no action (45 sympathetic teardown, 121, 154 recovery action changed).
- ``unknown``: not in the table (or 999): warning plus an immediate canary.
- ``ignore``: only through config overrides (the device plugin's disable list): counted only.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from sidecar.gpu.backend import XID_UNKNOWN_CODE


class XidClass(enum.Enum):
    NODE_FATAL = "node_fatal"
    GPU_FATAL = "gpu_fatal"
    NVLINK = "nvlink"
    PROCESS = "process"
    WARNING = "warning"
    INFO = "info"
    UNKNOWN = "unknown"
    IGNORE = "ignore"


XID_CLASS_NAMES: Final = tuple(c.value for c in XidClass)

_N, _G, _L, _P, _W, _I = (
    XidClass.NODE_FATAL,
    XidClass.GPU_FATAL,
    XidClass.NVLINK,
    XidClass.PROCESS,
    XidClass.WARNING,
    XidClass.INFO,
)

# code -> (class, mnemonic). Source: the Xid catalogue (immediate action column).
CATALOGUE: Final[Mapping[int, tuple[XidClass, str]]] = MappingProxyType(
    {
        8: (_P, "FIFO idle timeout"),
        13: (_P, "Graphics engine exception"),
        31: (_P, "MMU fault (GPU memory page fault)"),
        32: (_P, "PBDMA error (corrupted push buffer)"),
        43: (_P, "Reset channel verification (GPU remains healthy)"),
        45: (_I, "Preemptive removal (application teardown)"),
        46: (_G, "GPU timeout"),
        48: (_G, "Double-bit ECC error"),
        54: (_N, "Auxiliary power not connected"),
        62: (_G, "PMU halt error"),
        63: (_W, "DRAM row-remap / page-retirement event"),
        64: (_G, "DRAM row-remap / page-retirement failure"),
        68: (_P, "NVDEC0 exception"),
        69: (_P, "Graphics class error"),
        74: (_L, "NVLink error"),
        79: (_N, "GPU has fallen off the bus"),
        92: (_W, "Excessive single-bit ECC interrupts"),
        94: (_P, "Contained memory error"),
        95: (_G, "Uncontained memory error"),
        109: (_G, "Context-switch timeout"),
        110: (_G, "Security fault"),
        119: (_G, "GSP RPC timeout"),
        120: (_G, "GSP error"),
        121: (_I, "C2C corrected error"),
        136: (_G, "Link training failed"),
        137: (_P, "NVLink privilege error (application P2P bug)"),
        140: (_G, "Unrecoverable ECC error escape"),
        143: (_G, "GPU initialisation error"),
        144: (_L, "NVLink5 SAW error"),
        145: (_L, "NVLink5 RLW error"),
        146: (_L, "NVLink5 TLW error"),
        147: (_L, "NVLink5 TREX error"),
        148: (_L, "NVLink5 NVLPW error"),
        149: (_L, "NVLink5 NETIR error"),
        150: (_L, "NVLink5 MSE error"),
        151: (_N, "Key rotation error (confidential computing)"),
        154: (_I, "GPU recovery action changed"),
        155: (_G, "NVLink software-defined link down"),
        156: (_G, "Resource retirement event"),
        157: (_W, "Resource retirement failure"),
        158: (_G, "GPU fatal timeout"),
        168: (_N, "Errors in WPR"),
        171: (_G, "Uncorrectable DRAM error"),
        172: (_G, "Uncorrectable SRAM error"),
    }
)

# Xids that accompany an uncorrectable ECC error and classify it.
XID_ECC_CONTAINED: Final = 94
XID_ECC_UNCONTAINED: Final = frozenset({48, 95, 140, 171, 172})
XID_RECOVERY_ACTION_CHANGED: Final = 154


class XidTable:
    """The catalogue table with config overrides applied (override wins)."""

    def __init__(self, overrides: Mapping[int, XidClass] | None = None) -> None:
        self.overrides: Mapping[int, XidClass] = MappingProxyType(dict(overrides or {}))

    def classify(self, code: int) -> XidClass:
        if code in self.overrides:
            return self.overrides[code]
        if code == XID_UNKNOWN_CODE:
            return XidClass.UNKNOWN
        entry = CATALOGUE.get(code)
        return entry[0] if entry is not None else XidClass.UNKNOWN

    @staticmethod
    def describe(code: int) -> str:
        if code == XID_UNKNOWN_CODE:
            return "Xid not known to the driver"
        entry = CATALOGUE.get(code)
        return entry[1] if entry is not None else "Xid not in the catalogue table"


def xid_reason(code: int, cls: XidClass) -> str:
    """The CamelCase reason a check reports for an Xid of this class."""
    prefix = {
        XidClass.NODE_FATAL: "XidFatal",
        XidClass.GPU_FATAL: "XidGpuReset",
        XidClass.NVLINK: "XidNvlink",
        XidClass.PROCESS: "XidProcess",
        XidClass.WARNING: "XidWarning",
        XidClass.INFO: "XidInfo",
        XidClass.UNKNOWN: "XidUnknown",
        XidClass.IGNORE: "XidIgnored",
    }[cls]
    return f"{prefix}{code}"


def parse_xid_class(name: str) -> XidClass:
    """A class from its config name (``gpu_fatal``, ``process``, ...). Raises ValueError."""
    normalized = name.strip().lower().replace("-", "_")
    for cls in XidClass:
        if cls.value == normalized:
            return cls
    raise ValueError(f"must be one of {', '.join(XID_CLASS_NAMES)}; got {name!r}")
