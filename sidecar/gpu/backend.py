"""The GPU backend protocol, its value types, and the project's NVML exceptions.

Two implementations sit behind :class:`GpuBackend`: :class:`sidecar.gpu.real.RealNvmlBackend`
(nvidia-ml-py) and :class:`sidecar.gpu.simulated.SimulatedBackend` (the scenario file). Checks
never import ``pynvml``: they see these types only. Library errors are translated into the
exceptions below at the backend boundary; a signal that the hardware or driver does not support
is the :data:`UNSUPPORTED` value ("unmonitored"), never an error.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias, TypeVar, Union

from sidecar.core.errors import SidecarError

T = TypeVar("T")

# NVML's "not attributable to a MIG instance" GI/CI value in event data.
MIG_ID_ANY: Final = 0xFFFFFFFF
# eventData of an Xid event whose code the driver does not know.
XID_UNKNOWN_CODE: Final = 999


# --- exceptions --------------------------------------------------------------------------------


class NvmlError(SidecarError):
    """An NVML call failed. ``reason`` is the CamelCase reason a check reports; ``text`` is
    NVML's own error text; ``code`` the NVML return code (0 when not from NVML)."""

    reason = "NvmlError"

    def __init__(self, text: str, *, code: int = 0, uuid: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.uuid = uuid


class NvmlUnavailableError(NvmlError):
    """NVML cannot be used at all: library missing, driver not loaded, version mismatch,
    no permission. The GPU layer cannot vouch for anything (fail closed)."""

    reason = "NvmlUnavailable"


class DriverNotLoadedError(NvmlUnavailableError):
    reason = "DriverNotLoaded"


class DriverVersionMismatchError(NvmlUnavailableError):
    """``LIB_RM_VERSION_MISMATCH``: the user-space library and kernel module differ (typically
    after a driver upgrade without a reboot)."""

    reason = "DriverVersionMismatch"


class GpuGoneError(NvmlError):
    """The GPU left the inventory between enumeration and this call (the simulated backend,
    when the scenario drops it): not a fault; the next enumeration no longer lists it."""

    reason = "GpuGone"


class GpuLostError(NvmlError):
    """``GPU_IS_LOST``: the GPU fell off the bus or is otherwise inaccessible (node-fatal)."""

    reason = "GpuLost"


class ResetRequiredError(NvmlError):
    """``RESET_REQUIRED``: the GPU must be reset before it can be used again (GPU-fatal)."""

    reason = "GpuResetRequired"


class NvmlTimeoutError(NvmlError):
    """NVML's own ``TIMEOUT`` (event wait timed out or was interrupted). Not a finding."""

    reason = "NvmlTimeout"


class NvmlHungError(NvmlError):
    """An NVML call did not return within the watchdog timeout (ours, not NVML's)."""

    reason = "NvmlHung"


# --- readings ----------------------------------------------------------------------------------


class Unsupported(enum.Enum):
    """The signal is not supported here (``NOT_SUPPORTED``): reported as unmonitored."""

    UNSUPPORTED = "unsupported"

    def __repr__(self) -> str:
        return "UNSUPPORTED"


UNSUPPORTED: Final = Unsupported.UNSUPPORTED


@dataclass(frozen=True, slots=True)
class SignalError:
    """A signal could not be read for a reason other than lack of support."""

    reason: str
    message: str


# The outcome of reading one signal: a value, UNSUPPORTED, or a SignalError.
Reading: TypeAlias = Union[T, Unsupported, SignalError]  # noqa: UP007


def value_or_none(reading: Reading[T]) -> T | None:
    """The value of a reading, or None when unsupported or failed."""
    if isinstance(reading, Unsupported | SignalError):
        return None
    return reading


# --- value types -------------------------------------------------------------------------------


class RecoveryAction(enum.IntEnum):
    """``NVML_FI_DEV_GET_GPU_RECOVERY_ACTION`` values (driver R565+, nvidia-ml-py 13.615)."""

    NONE = 0
    GPU_RESET = 1
    NODE_REBOOT = 2
    DRAIN_P2P = 3
    DRAIN_AND_RESET = 4
    RECOVER_IMEX_DOMAIN = 5
    BUS_RESET = 6
    SYSTEM_REBOOT = 7


RESET_CLASS_ACTIONS: Final = frozenset(
    {RecoveryAction.GPU_RESET, RecoveryAction.DRAIN_AND_RESET, RecoveryAction.BUS_RESET}
)
REBOOT_CLASS_ACTIONS: Final = frozenset(
    {RecoveryAction.NODE_REBOOT, RecoveryAction.SYSTEM_REBOOT}
)


def recovery_action_name(value: int) -> str:
    try:
        return RecoveryAction(value).name.lower()
    except ValueError:
        return f"unknown_{value}"


class ComputeMode(enum.IntEnum):
    """``NVML_COMPUTEMODE_*``."""

    DEFAULT = 0
    EXCLUSIVE_THREAD = 1
    PROHIBITED = 2
    EXCLUSIVE_PROCESS = 3


def compute_mode_name(value: int) -> str:
    try:
        return ComputeMode(value).name.lower()
    except ValueError:
        return f"unknown_{value}"


# Clock event reasons that mean the hardware is slowing the GPU down (not benign idle/power cap).
CLOCKS_HW_SLOWDOWN: Final = 0x8
CLOCKS_HW_THERMAL_SLOWDOWN: Final = 0x40
CLOCKS_HW_POWER_BRAKE_SLOWDOWN: Final = 0x80
CLOCKS_HW_MASK: Final = CLOCKS_HW_SLOWDOWN | CLOCKS_HW_THERMAL_SLOWDOWN | CLOCKS_HW_POWER_BRAKE_SLOWDOWN


class EventType(enum.IntFlag):
    """NVML event types the listener registers (``nvmlEventType*``)."""

    SINGLE_BIT_ECC = 0x1
    DOUBLE_BIT_ECC = 0x2
    XID_CRITICAL = 0x8
    GPU_RECOVERY_ACTION = 0x8000


LISTENED_EVENTS: Final = (
    EventType.SINGLE_BIT_ECC
    | EventType.DOUBLE_BIT_ECC
    | EventType.XID_CRITICAL
    | EventType.GPU_RECOVERY_ACTION
)


@dataclass(frozen=True, slots=True)
class MigInstance:
    """A MIG device visible to this pod: its UUID and GPU / compute instance ids."""

    uuid: str
    gpu_instance_id: int
    compute_instance_id: int


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """Identity of one GPU seen by NVML (in this container)."""

    index: int
    uuid: str
    name: str = ""
    pci_bus_id: str = ""
    mig_enabled: bool = False
    instances: tuple[MigInstance, ...] = ()
    lost: bool = False  # the handle could not even be obtained (GPU_IS_LOST at enumeration)
    compute_capability: str = ""  # "9.0"; "" when unknown


@dataclass(frozen=True, slots=True)
class SystemInfo:
    """Driver-level facts read once at open."""

    driver_version: str = ""
    nvml_version: str = ""
    cuda_driver_version: int = 0


@dataclass(frozen=True, slots=True)
class EccCounters:
    """Total ECC error counters (``nvmlDeviceGetTotalEccErrors``); None = that one unsupported."""

    volatile_corrected: int | None = 0
    volatile_uncorrected: int | None = 0
    aggregate_corrected: int | None = 0
    aggregate_uncorrected: int | None = 0


@dataclass(frozen=True, slots=True)
class RemappedRows:
    """``nvmlDeviceGetRemappedRows``: (correctable, uncorrectable, pending, failure)."""

    correctable: int = 0
    uncorrectable: int = 0
    pending: bool = False
    failure: bool = False


@dataclass(frozen=True, slots=True)
class MemoryInfo:
    """Framebuffer memory in bytes. ``used`` counts every process on the GPU, not just ours."""

    total: int
    used: int
    free: int


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A compute process on the GPU. ``pid`` is a *host* PID (NVML ignores PID namespaces)."""

    pid: int
    used_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class GpuSample:
    """Every polled signal of one GPU, read in one backend call (microseconds of NVML)."""

    info: GpuInfo
    ecc: Reading[EccCounters] = UNSUPPORTED
    remap: Reading[RemappedRows] = UNSUPPORTED
    retired_pages_pending: Reading[bool] = UNSUPPORTED
    recovery_action: Reading[int] = UNSUPPORTED
    memory: Reading[MemoryInfo] = UNSUPPORTED
    temperature_c: Reading[int] = UNSUPPORTED
    slowdown_threshold_c: Reading[int] = UNSUPPORTED
    shutdown_threshold_c: Reading[int] = UNSUPPORTED
    clock_event_reasons: Reading[int] = UNSUPPORTED
    compute_mode: Reading[int] = UNSUPPORTED
    utilization_gpu_pct: Reading[int] = UNSUPPORTED
    pcie_replay_count: Reading[int] = UNSUPPORTED
    processes: Reading[tuple[ProcessInfo, ...]] = UNSUPPORTED
    # Throttling evidence for the trend detectors: cumulative time (seconds) the GPU was held
    # below its clocks by the power / thermal policy (nvmlDeviceGetViolationStatus), and the
    # current and maximum SM clocks.
    power_violation_s: Reading[float] = UNSUPPORTED
    thermal_violation_s: Reading[float] = UNSUPPORTED
    sm_clock_mhz: Reading[int] = UNSUPPORTED
    sm_clock_max_mhz: Reading[int] = UNSUPPORTED
    # Simulated backends only: a counter whose change means "the GPU was reset".
    reset_count: int | None = None


@dataclass(frozen=True, slots=True)
class GpuEvent:
    """One NVML event: ``data`` is the Xid code for XID_CRITICAL (999 = unknown), else 0."""

    uuid: str
    event_type: int
    data: int = 0
    gpu_instance_id: int = MIG_ID_ANY
    compute_instance_id: int = MIG_ID_ANY
    wall_time: float = 0.0  # time.time() when the backend received it


@dataclass(frozen=True, slots=True)
class EventRegistration:
    """What could be registered for one GPU; unsupported types are unmonitored, not unhealthy."""

    uuid: str
    registered: int
    unsupported: int = 0
    error: str = ""


# Names of the polled signals in :class:`GpuSample` (tables, the scenario's ``unsupported`` list).
SIGNALS: Final = (
    "ecc",
    "remap",
    "retired_pages_pending",
    "recovery_action",
    "memory",
    "temperature_c",
    "slowdown_threshold_c",
    "shutdown_threshold_c",
    "clock_event_reasons",
    "compute_mode",
    "utilization_gpu_pct",
    "pcie_replay_count",
    "processes",
    "power_violation_s",
    "thermal_violation_s",
    "sm_clock_mhz",
    "sm_clock_max_mhz",
)


class GpuBackend(Protocol):
    """The narrow surface the GPU component needs. Every method may block (they run on the
    component's NVML worker thread or the listener thread, never on the event loop) and may
    raise the :class:`NvmlError` subclasses above."""

    kind: str  # "nvml" or "simulated"

    def open(self) -> SystemInfo:
        """Initialise (idempotent). Raises :class:`NvmlUnavailableError` subclasses."""
        ...

    def devices(self) -> list[GpuInfo]:
        """The GPUs visible to this container, in NVML index order."""
        ...

    def sample(self, uuid: str) -> GpuSample:
        """Read every polled signal of one GPU. Raises :class:`GpuLostError` /
        :class:`ResetRequiredError` when the device as a whole is unusable."""
        ...

    def validate_inforom(self, uuid: str) -> Reading[bool]:
        """True when the InfoROM is valid (slow: ~70 ms on an H200; run rarely)."""
        ...

    def register_events(self, uuids: Iterable[str]) -> list[EventRegistration]:
        """Register Xid / ECC / recovery-action events on each GPU (MIG: on the parent)."""
        ...

    def wait_event(self, timeout_s: float) -> GpuEvent | None:
        """Block up to ``timeout_s`` for the next event; None on timeout."""
        ...

    def close(self) -> None:
        """Free the event set and shut NVML down; unblocks a hung simulated call."""
        ...
