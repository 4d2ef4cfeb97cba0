"""The real GPU backend: nvidia-ml-py (``import pynvml``), errors translated at this boundary.

``NOT_SUPPORTED`` (and a function the installed driver lacks) becomes :data:`UNSUPPORTED`;
``GPU_IS_LOST`` / ``RESET_REQUIRED`` abort the sample of that GPU with :class:`GpuLostError` /
:class:`ResetRequiredError`; ``DRIVER_NOT_LOADED``, ``LIB_RM_VERSION_MISMATCH``, a missing
library, ``NO_PERMISSION`` at init and ``UNINITIALIZED`` are :class:`NvmlUnavailableError`
subclasses; any other error of one signal is a :class:`SignalError` for that signal only.

The module is injected through the constructor (``RealNvmlBackend(nvml=module_like)``) so the
translation is unit-tested with a fake module; by default ``pynvml`` is imported lazily, so a
machine without nvidia-ml-py still constructs the backend and reports ``NvmlUnavailable``.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sidecar.gpu.backend import (
    LISTENED_EVENTS,
    UNSUPPORTED,
    DriverNotLoadedError,
    DriverVersionMismatchError,
    EccCounters,
    EventRegistration,
    GpuEvent,
    GpuInfo,
    GpuLostError,
    GpuSample,
    MemoryInfo,
    MigInstance,
    NvmlError,
    NvmlTimeoutError,
    NvmlUnavailableError,
    ProcessInfo,
    Reading,
    RemappedRows,
    ResetRequiredError,
    SignalError,
    SystemInfo,
    Unsupported,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# NVML return codes (nvml.h); the injected module's constants are used when it has them.
_NOT_SUPPORTED = 3
_UNINITIALIZED = 1
_NO_PERMISSION = 4
_NOT_FOUND = 6
_DRIVER_NOT_LOADED = 9
_TIMEOUT = 10
_LIBRARY_NOT_FOUND = 12
_FUNCTION_NOT_FOUND = 13
_GPU_IS_LOST = 15
_RESET_REQUIRED = 16
_LIB_RM_VERSION_MISMATCH = 18
_ARGUMENT_VERSION_MISMATCH = 25

_FI_DEV_GET_GPU_RECOVERY_ACTION = 230


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _handle_key(handle: Any) -> int:
    """A hashable identity for an NVML device handle (a ctypes pointer, or a fake's object)."""
    try:
        key = ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return id(handle)
    return key if key is not None else id(handle)


def _field_value(field: Any) -> int:
    """The integer in a ``c_nvmlFieldValue_t`` according to its ``valueType``."""
    value = field.value
    by_type = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    attr = by_type.get(int(getattr(field, "valueType", 1)), "uiVal")
    return int(getattr(value, attr))


class RealNvmlBackend:
    """GPU backend over nvidia-ml-py. Thread-safe as NVML is; one ``nvmlInit`` per instance."""

    kind = "nvml"

    def __init__(self, nvml: Any | None = None) -> None:
        self._nvml: Any = nvml
        self._lock = threading.Lock()
        self._opened = False
        self._handles: dict[str, Any] = {}  # uuid -> device handle (parents only)
        self._infos: list[GpuInfo] = []
        self._by_key: dict[int, str] = {}
        self._event_set: Any = None

    # -- error translation --------------------------------------------------------------------

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise NvmlUnavailableError(
                    f"nvidia-ml-py is not installed ({exc}); install the 'gpu' extra"
                ) from exc
        return self._nvml

    def _code(self, name: str, default: int) -> int:
        return int(getattr(self._nvml, name, default))

    def translate(self, exc: BaseException, uuid: str | None = None) -> NvmlError | Unsupported:
        """Map an ``NVMLError`` (or anything else) to the project's error or UNSUPPORTED."""
        code = int(getattr(exc, "value", -1))
        text = str(exc) or type(exc).__name__
        if code in (
            self._code("NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED),
            self._code("NVML_ERROR_FUNCTION_NOT_FOUND", _FUNCTION_NOT_FOUND),
        ):
            return UNSUPPORTED
        if code == self._code("NVML_ERROR_GPU_IS_LOST", _GPU_IS_LOST):
            return GpuLostError(text, code=code, uuid=uuid)
        if code == self._code("NVML_ERROR_RESET_REQUIRED", _RESET_REQUIRED):
            return ResetRequiredError(text, code=code, uuid=uuid)
        if code == self._code("NVML_ERROR_DRIVER_NOT_LOADED", _DRIVER_NOT_LOADED):
            return DriverNotLoadedError(text, code=code)
        if code == self._code("NVML_ERROR_LIB_RM_VERSION_MISMATCH", _LIB_RM_VERSION_MISMATCH):
            return DriverVersionMismatchError(text, code=code)
        if code in (
            self._code("NVML_ERROR_LIBRARY_NOT_FOUND", _LIBRARY_NOT_FOUND),
            self._code("NVML_ERROR_UNINITIALIZED", _UNINITIALIZED),
        ):
            return NvmlUnavailableError(text, code=code)
        if code == self._code("NVML_ERROR_TIMEOUT", _TIMEOUT):
            return NvmlTimeoutError(text, code=code, uuid=uuid)
        return NvmlError(text, code=code, uuid=uuid)

    def _is_nvml_error(self, exc: BaseException) -> bool:
        cls = getattr(self._nvml, "NVMLError", None)
        return isinstance(cls, type) and isinstance(exc, cls)

    def _call(self, uuid: str | None, fn: Callable[..., T], *args: Any) -> T:
        """Call NVML; raise the translated error (UNSUPPORTED becomes a plain NvmlError 3)."""
        try:
            return fn(*args)
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
            err = self.translate(exc, uuid)
            if isinstance(err, Unsupported):
                raise NvmlError(str(exc), code=_NOT_SUPPORTED, uuid=uuid) from exc
            raise err from exc

    def _read(self, uuid: str, fn: Callable[..., T], *args: Any) -> Reading[T]:
        """One signal: value, UNSUPPORTED, or SignalError; device-level errors propagate."""
        try:
            return fn(*args)
        except Exception as exc:
            if not self._is_nvml_error(exc):
                return SignalError("NvmlError", f"{type(exc).__name__}: {exc}")
            err = self.translate(exc, uuid)
            if isinstance(err, Unsupported):
                return UNSUPPORTED
            if isinstance(err, GpuLostError | ResetRequiredError | NvmlUnavailableError):
                raise err from exc
            reason = "NvmlNoPermission" if err.code == _NO_PERMISSION else err.reason
            return SignalError(reason, err.text)

    # -- protocol -----------------------------------------------------------------------------

    def open(self) -> SystemInfo:
        nvml = self._module()
        with self._lock:
            if not self._opened:
                try:
                    nvml.nvmlInit()
                except Exception as exc:
                    if not self._is_nvml_error(exc):
                        raise NvmlUnavailableError(f"{type(exc).__name__}: {exc}") from exc
                    err = self.translate(exc)
                    if isinstance(err, NvmlUnavailableError):
                        raise err from exc
                    code = err.code if isinstance(err, NvmlError) else _NOT_SUPPORTED
                    raise NvmlUnavailableError(str(exc), code=code) from exc
                try:
                    self._enumerate()
                except NvmlError:
                    with contextlib.suppress(Exception):
                        nvml.nvmlShutdown()  # init is ref-counted: undo it, retry next time
                    raise
                self._opened = True
        driver = self._read("", nvml.nvmlSystemGetDriverVersion)
        version = self._read("", nvml.nvmlSystemGetNVMLVersion)
        cuda = self._read("", nvml.nvmlSystemGetCudaDriverVersion)
        return SystemInfo(
            driver_version=_text(driver) if isinstance(driver, str | bytes) else "",
            nvml_version=_text(version) if isinstance(version, str | bytes) else "",
            cuda_driver_version=cuda if isinstance(cuda, int) else 0,
        )

    def _enumerate(self) -> None:
        nvml = self._nvml
        count = self._call(None, nvml.nvmlDeviceGetCount)
        infos: list[GpuInfo] = []
        handles: dict[str, Any] = {}
        for index in range(int(count)):
            try:
                handle = self._call(None, nvml.nvmlDeviceGetHandleByIndex, index)
                uuid = _text(self._call(None, nvml.nvmlDeviceGetUUID, handle))
            except GpuLostError:
                infos.append(GpuInfo(index=index, uuid=f"unknown-index-{index}", lost=True))
                continue
            name = self._read(uuid, nvml.nvmlDeviceGetName, handle)
            pci = self._read(uuid, nvml.nvmlDeviceGetPciInfo, handle)
            bus_id = _text(pci.busId) if not isinstance(pci, Unsupported | SignalError) else ""
            mig_enabled, instances = self._mig(uuid, handle)
            cc = self._read(uuid, nvml.nvmlDeviceGetCudaComputeCapability, handle)
            cc_text = f"{cc[0]}.{cc[1]}" if isinstance(cc, tuple | list) and len(cc) == 2 else ""
            infos.append(
                GpuInfo(
                    index=index,
                    uuid=uuid,
                    name=_text(name) if isinstance(name, str | bytes) else "",
                    pci_bus_id=bus_id,
                    mig_enabled=mig_enabled,
                    instances=instances,
                    compute_capability=cc_text,
                )
            )
            handles[uuid] = handle
            self._by_key[_handle_key(handle)] = uuid
        self._infos = infos
        self._handles = handles

    def _mig(self, uuid: str, handle: Any) -> tuple[bool, tuple[MigInstance, ...]]:
        nvml = self._nvml
        mode = self._read(uuid, nvml.nvmlDeviceGetMigMode, handle)
        if isinstance(mode, Unsupported | SignalError) or not mode or int(mode[0]) != 1:
            return False, ()
        instances: list[MigInstance] = []
        max_count = self._read(uuid, nvml.nvmlDeviceGetMaxMigDeviceCount, handle)
        for i in range(max_count if isinstance(max_count, int) else 0):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
                instances.append(
                    MigInstance(
                        uuid=_text(nvml.nvmlDeviceGetUUID(mig)),
                        gpu_instance_id=int(nvml.nvmlDeviceGetGpuInstanceId(mig)),
                        compute_instance_id=int(nvml.nvmlDeviceGetComputeInstanceId(mig)),
                    )
                )
            except Exception as exc:  # NOT_FOUND for empty slots, or not visible to us
                if not self._is_nvml_error(exc):
                    raise
        return True, tuple(instances)

    def devices(self) -> list[GpuInfo]:
        return list(self._infos)

    def _handle(self, uuid: str) -> Any:
        try:
            return self._handles[uuid]
        except KeyError:
            raise GpuLostError(f"no NVML handle for {uuid}", uuid=uuid) from None

    def sample(self, uuid: str) -> GpuSample:
        nvml = self._nvml
        h = self._handle(uuid)
        info = next(i for i in self._infos if i.uuid == uuid)
        return GpuSample(
            info=info,
            ecc=self._ecc(uuid, h),
            remap=self._remap(uuid, h),
            retired_pages_pending=self._map(
                self._read(uuid, nvml.nvmlDeviceGetRetiredPagesPendingStatus, h), bool
            ),
            recovery_action=self._recovery_action(uuid, h),
            memory=self._memory(uuid, h),
            temperature_c=self._temperature(uuid, h),
            slowdown_threshold_c=self._read(
                uuid,
                nvml.nvmlDeviceGetTemperatureThreshold,
                h,
                getattr(nvml, "NVML_TEMPERATURE_THRESHOLD_SLOWDOWN", 1),
            ),
            shutdown_threshold_c=self._read(
                uuid,
                nvml.nvmlDeviceGetTemperatureThreshold,
                h,
                getattr(nvml, "NVML_TEMPERATURE_THRESHOLD_SHUTDOWN", 0),
            ),
            clock_event_reasons=self._clocks(uuid, h),
            compute_mode=self._map(self._read(uuid, nvml.nvmlDeviceGetComputeMode, h), int),
            utilization_gpu_pct=self._map(
                self._read(uuid, nvml.nvmlDeviceGetUtilizationRates, h), lambda u: int(u.gpu)
            ),
            pcie_replay_count=self._map(self._read(uuid, nvml.nvmlDeviceGetPcieReplayCounter, h), int),
            processes=self._map(
                self._read(uuid, nvml.nvmlDeviceGetComputeRunningProcesses, h),
                lambda procs: tuple(
                    ProcessInfo(
                        pid=int(p.pid),
                        used_bytes=None
                        if getattr(p, "usedGpuMemory", None) is None
                        else int(p.usedGpuMemory),
                    )
                    for p in procs
                ),
            ),
            power_violation_s=self._violation(uuid, h, getattr(nvml, "NVML_PERF_POLICY_POWER", 0)),
            thermal_violation_s=self._violation(uuid, h, getattr(nvml, "NVML_PERF_POLICY_THERMAL", 1)),
            sm_clock_mhz=self._optional(uuid, "nvmlDeviceGetClockInfo", h, getattr(nvml, "NVML_CLOCK_SM", 1)),
            sm_clock_max_mhz=self._optional(
                uuid, "nvmlDeviceGetMaxClockInfo", h, getattr(nvml, "NVML_CLOCK_SM", 1)
            ),
        )

    def _optional(self, uuid: str, function: str, *args: Any) -> Reading[int]:
        """A signal read through an NVML function that older bindings may lack (unsupported)."""
        fn = getattr(self._nvml, function, None)
        if fn is None:
            return UNSUPPORTED
        return self._map(self._read(uuid, fn, *args), int)

    def _violation(self, uuid: str, h: Any, policy: int) -> Reading[float]:
        """Cumulative throttled time of one perf policy, in seconds (``violationTime`` is ns)."""
        fn = getattr(self._nvml, "nvmlDeviceGetViolationStatus", None)
        if fn is None:
            return UNSUPPORTED
        return self._map(self._read(uuid, fn, h, policy), lambda v: float(v.violationTime) / 1e9)

    @staticmethod
    def _map(reading: Reading[Any], fn: Callable[[Any], T]) -> Reading[T]:
        if isinstance(reading, Unsupported | SignalError):
            return reading
        return fn(reading)

    def _ecc(self, uuid: str, h: Any) -> Reading[EccCounters]:
        nvml = self._nvml
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
            r = self._read(uuid, nvml.nvmlDeviceGetTotalEccErrors, h, err_type, counter)
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

    def _remap(self, uuid: str, h: Any) -> Reading[RemappedRows]:
        r = self._read(uuid, self._nvml.nvmlDeviceGetRemappedRows, h)
        if isinstance(r, Unsupported | SignalError):
            return r
        corr, unc, pending, failure = r
        return RemappedRows(int(corr), int(unc), bool(pending), bool(failure))

    def _recovery_action(self, uuid: str, h: Any) -> Reading[int]:
        nvml = self._nvml
        field_id = getattr(nvml, "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION", _FI_DEV_GET_GPU_RECOVERY_ACTION)
        values = self._read(uuid, nvml.nvmlDeviceGetFieldValues, h, [field_id])
        if isinstance(values, Unsupported | SignalError):
            return values
        field = values[0]
        ret = int(getattr(field, "nvmlReturn", 0))
        if ret != 0:  # the call succeeds while one field fails: check each element
            err = self.translate(_ReturnCode(ret), uuid)
            if isinstance(err, Unsupported):
                return UNSUPPORTED
            if isinstance(err, GpuLostError | ResetRequiredError):
                raise err
            return SignalError(err.reason, f"recovery action field: NVML error {ret}")
        return _field_value(field)

    def _memory(self, uuid: str, h: Any) -> Reading[MemoryInfo]:
        nvml = self._nvml
        version = getattr(nvml, "nvmlMemory_v2", None)
        r: Reading[Any] = UNSUPPORTED
        if version is not None:
            r = self._read(uuid, nvml.nvmlDeviceGetMemoryInfo, h, version)
        if isinstance(r, Unsupported) or (isinstance(r, SignalError) and "version" in r.message.lower()):
            r = self._read(uuid, nvml.nvmlDeviceGetMemoryInfo, h)
        if isinstance(r, Unsupported | SignalError):
            return r
        return MemoryInfo(total=int(r.total), used=int(r.used), free=int(r.free))

    def _temperature(self, uuid: str, h: Any) -> Reading[int]:
        nvml = self._nvml
        sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        fn = getattr(nvml, "nvmlDeviceGetTemperatureV", None)
        if fn is not None:
            r = self._read(uuid, fn, h, sensor)
            if not isinstance(r, Unsupported):
                return self._map(r, int)
        return self._map(self._read(uuid, nvml.nvmlDeviceGetTemperature, h, sensor), int)

    def _clocks(self, uuid: str, h: Any) -> Reading[int]:
        nvml = self._nvml
        fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
        if fn is None:
            fn = nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return self._map(self._read(uuid, fn, h), int)

    def validate_inforom(self, uuid: str) -> Reading[bool]:
        h = self._handle(uuid)
        try:
            self._nvml.nvmlDeviceValidateInforom(h)
        except Exception as exc:
            if not self._is_nvml_error(exc):
                return SignalError("NvmlError", str(exc))
            if int(getattr(exc, "value", -1)) == getattr(self._nvml, "NVML_ERROR_CORRUPTED_INFOROM", 14):
                return False
            err = self.translate(exc, uuid)
            if isinstance(err, Unsupported):
                return UNSUPPORTED
            if isinstance(err, GpuLostError | ResetRequiredError):
                raise err from exc
            return SignalError(err.reason, err.text)
        return True

    def register_events(self, uuids: Iterable[str]) -> list[EventRegistration]:
        nvml = self._nvml
        if self._event_set is None:
            self._event_set = self._call(None, nvml.nvmlEventSetCreate)
        out: list[EventRegistration] = []
        for uuid in uuids:
            h = self._handles.get(uuid)
            if h is None:
                out.append(EventRegistration(uuid, 0, int(LISTENED_EVENTS), "no handle"))
                continue
            supported = self._read(uuid, nvml.nvmlDeviceGetSupportedEventTypes, h)
            mask = int(LISTENED_EVENTS)
            if isinstance(supported, int):
                mask &= supported
            unsupported = int(LISTENED_EVENTS) & ~mask
            try:
                if mask:
                    nvml.nvmlDeviceRegisterEvents(h, mask, self._event_set)
                out.append(EventRegistration(uuid, mask, unsupported))
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                err = self.translate(exc, uuid)
                if isinstance(err, Unsupported):
                    out.append(EventRegistration(uuid, 0, int(LISTENED_EVENTS)))
                elif isinstance(err, GpuLostError):
                    raise err from exc
                else:
                    out.append(EventRegistration(uuid, 0, 0, f"{err.reason}: {err.text}"))
        return out

    def wait_event(self, timeout_s: float) -> GpuEvent | None:
        nvml = self._nvml
        if self._event_set is None:
            time.sleep(timeout_s)
            return None
        try:
            data = nvml.nvmlEventSetWait_v2(self._event_set, max(1, int(timeout_s * 1000)))
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
            err = self.translate(exc)
            if isinstance(err, NvmlTimeoutError):
                return None  # timeout, or an interrupt that returned early
            if isinstance(err, Unsupported):
                raise NvmlError(str(exc), code=_NOT_SUPPORTED) from exc
            raise err from exc
        uuid = self._by_key.get(_handle_key(data.device), "")
        return GpuEvent(
            uuid=uuid,
            event_type=int(data.eventType),
            data=int(data.eventData),
            gpu_instance_id=int(getattr(data, "gpuInstanceId", 0xFFFFFFFF)),
            compute_instance_id=int(getattr(data, "computeInstanceId", 0xFFFFFFFF)),
            wall_time=time.time(),
        )

    def close(self) -> None:
        nvml = self._nvml
        if nvml is None:
            return
        with self._lock:
            if self._event_set is not None:
                try:
                    nvml.nvmlEventSetFree(self._event_set)
                except Exception:
                    log.debug("nvmlEventSetFree failed", exc_info=True)
                self._event_set = None
            if self._opened:
                try:
                    nvml.nvmlShutdown()
                except Exception:
                    log.debug("nvmlShutdown failed", exc_info=True)
                self._opened = False


class _ReturnCode(Exception):
    """A bare NVML return code from a field value, shaped like an NVMLError for translate()."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value
