"""How :class:`sidecar.gpu.real.RealNvmlBackend` reads each NVML signal: which function, which
fallback for older drivers and bindings, how a result becomes a reading (value, UNSUPPORTED or a
SignalError). Each function takes the NVML module and one device handle."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sidecar.gpu.backend import (
    UNSUPPORTED,
    EccCounters,
    GpuLostError,
    MemoryInfo,
    Reading,
    RemappedRows,
    ResetRequiredError,
    SignalError,
    Unsupported,
)
from sidecar.gpu.nvml_errors import FI_DEV_GET_GPU_RECOVERY_ACTION, ReturnCode, field_value, read, translate

T = TypeVar("T")


def optional(nvml: Any, uuid: str, function: str, *args: Any) -> Reading[int]:
    """A signal read through an NVML function that older bindings may lack (unsupported)."""
    fn = getattr(nvml, function, None)
    if fn is None:
        return UNSUPPORTED
    return map_reading(read(nvml, uuid, fn, *args), int)


def violation(nvml: Any, uuid: str, h: Any, policy: int) -> Reading[float]:
    """Cumulative throttled time of one perf policy, in seconds (``violationTime`` is ns)."""
    fn = getattr(nvml, "nvmlDeviceGetViolationStatus", None)
    if fn is None:
        return UNSUPPORTED
    return map_reading(read(nvml, uuid, fn, h, policy), lambda v: float(v.violationTime) / 1e9)


def map_reading(reading: Reading[Any], fn: Callable[[Any], T]) -> Reading[T]:
    if isinstance(reading, Unsupported | SignalError):
        return reading
    return fn(reading)


def ecc(nvml: Any, uuid: str, h: Any) -> Reading[EccCounters]:
    corrected = getattr(nvml, "NVML_MEMORY_ERROR_TYPE_CORRECTED", 0)
    uncorrected = getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
    volatile = getattr(nvml, "NVML_VOLATILE_ECC", 0)
    aggregate = getattr(nvml, "NVML_AGGREGATE_ECC", 1)
    values: list[int | None] = []
    errors: list[SignalError] = []
    for err_type, counter in (
        (corrected, volatile),
        (uncorrected, volatile),
        (corrected, aggregate),
        (uncorrected, aggregate),
    ):
        r = read(nvml, uuid, nvml.nvmlDeviceGetTotalEccErrors, h, err_type, counter)
        if isinstance(r, SignalError):
            errors.append(r)
            values.append(None)
        elif isinstance(r, Unsupported):
            values.append(None)
        else:
            values.append(int(r))
    if values[1] is None and errors:
        return errors[0]
    if all(v is None for v in values):
        return UNSUPPORTED
    return EccCounters(*values)


def remap(nvml: Any, uuid: str, h: Any) -> Reading[RemappedRows]:
    r = read(nvml, uuid, nvml.nvmlDeviceGetRemappedRows, h)
    if isinstance(r, Unsupported | SignalError):
        return r
    corr, unc, pending, failure = r
    return RemappedRows(int(corr), int(unc), bool(pending), bool(failure))


def recovery_action(nvml: Any, uuid: str, h: Any) -> Reading[int]:
    field_id = getattr(nvml, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", FI_DEV_GET_GPU_RECOVERY_ACTION)
    values = read(nvml, uuid, nvml.nvmlDeviceGetFieldValues, h, [field_id])
    if isinstance(values, Unsupported | SignalError):
        return values
    field = values[0]
    ret = int(getattr(field, "nvmlReturn", 0))
    if ret != 0:  # the call succeeds while one field fails: check each element
        err = translate(nvml, ReturnCode(ret), uuid)
        if isinstance(err, Unsupported):
            return UNSUPPORTED
        if isinstance(err, GpuLostError | ResetRequiredError):
            raise err
        return SignalError(err.reason, f"recovery action field: NVML error {ret}")
    return field_value(field)


def memory(nvml: Any, uuid: str, h: Any) -> Reading[MemoryInfo]:
    version = getattr(nvml, "nvmlMemory_v2", None)
    r: Reading[Any] = UNSUPPORTED
    if version is not None:
        r = read(nvml, uuid, nvml.nvmlDeviceGetMemoryInfo, h, version)
    if isinstance(r, Unsupported) or (isinstance(r, SignalError) and "version" in r.message.lower()):
        r = read(nvml, uuid, nvml.nvmlDeviceGetMemoryInfo, h)
    if isinstance(r, Unsupported | SignalError):
        return r
    return MemoryInfo(total=int(r.total), used=int(r.used), free=int(r.free))


def temperature(nvml: Any, uuid: str, h: Any) -> Reading[int]:
    sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
    fn = getattr(nvml, "nvmlDeviceGetTemperatureV", None)
    if fn is not None:
        r = read(nvml, uuid, fn, h, sensor)
        if not isinstance(r, Unsupported):
            return map_reading(r, int)
    return map_reading(read(nvml, uuid, nvml.nvmlDeviceGetTemperature, h, sensor), int)


def clocks(nvml: Any, uuid: str, h: Any) -> Reading[int]:
    fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    if fn is None:
        fn = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    return map_reading(read(nvml, uuid, fn, h), int)
