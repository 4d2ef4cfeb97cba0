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
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from sidecar.core.protocols import Clock
from sidecar.gpu import nvml_errors, nvml_signals
from sidecar.gpu.backend import (
    LISTENED_EVENTS,
    UNSUPPORTED,
    EventRegistration,
    GpuEvent,
    GpuInfo,
    GpuLostError,
    GpuSample,
    MigInstance,
    NvmlError,
    NvmlTimeoutError,
    NvmlUnavailableError,
    ProcessInfo,
    Reading,
    ResetRequiredError,
    SignalError,
    SystemInfo,
    Unsupported,
)
from sidecar.gpu.nvml_errors import (
    NOT_SUPPORTED,
    handle_key,
    text,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class RealNvmlBackend:
    """GPU backend over nvidia-ml-py. Thread-safe as NVML is; one ``nvmlInit`` per instance."""

    kind = "nvml"

    def __init__(self, nvml: Any | None = None, *, wall: Clock = time.time) -> None:
        self._nvml: Any = nvml
        self._wall = wall  # stamps each event with when it was received
        self._lock = threading.Lock()
        self._opened = False
        self._handles: dict[str, Any] = {}  # uuid -> device handle (parents only)
        self._infos: list[GpuInfo] = []
        self._by_key: dict[int, str] = {}
        self._event_set: Any = None

    # -- error translation (sidecar.gpu.nvml_errors) ------------------------------------------

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise NvmlUnavailableError(
                    f"nvidia-ml-py is not installed ({exc}); install the 'gpu' extra"
                ) from exc
        return self._nvml

    def translate(self, exc: BaseException, uuid: str | None = None) -> NvmlError | Unsupported:
        """Map an ``NVMLError`` (or anything else) to the project's error or UNSUPPORTED."""
        return nvml_errors.translate(self._nvml, exc, uuid)

    def _call(self, uuid: str | None, fn: Callable[..., T], *args: Any) -> T:
        return nvml_errors.call(self._nvml, uuid, fn, *args)

    def _read(self, uuid: str, fn: Callable[..., T], *args: Any) -> Reading[T]:
        return nvml_errors.read(self._nvml, uuid, fn, *args)

    # -- protocol -----------------------------------------------------------------------------

    def open(self) -> SystemInfo:
        nvml = self._module()
        with self._lock:
            if not self._opened:
                try:
                    nvml.nvmlInit()
                except Exception as exc:
                    if not nvml_errors.is_nvml_error(self._nvml, exc):
                        raise NvmlUnavailableError(f"{type(exc).__name__}: {exc}") from exc
                    err = self.translate(exc)
                    if isinstance(err, NvmlUnavailableError):
                        raise err from exc
                    code = err.code if isinstance(err, NvmlError) else NOT_SUPPORTED
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
            driver_version=text(driver) if isinstance(driver, str | bytes) else "",
            nvml_version=text(version) if isinstance(version, str | bytes) else "",
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
                uuid = text(self._call(None, nvml.nvmlDeviceGetUUID, handle))
            except GpuLostError:
                infos.append(GpuInfo(index=index, uuid=f"unknown-index-{index}", lost=True))
                continue
            name = self._read(uuid, nvml.nvmlDeviceGetName, handle)
            pci = self._read(uuid, nvml.nvmlDeviceGetPciInfo, handle)
            bus_id = text(pci.busId) if not isinstance(pci, Unsupported | SignalError) else ""
            mig_enabled, instances = self._mig(uuid, handle)
            cc = self._read(uuid, nvml.nvmlDeviceGetCudaComputeCapability, handle)
            cc_text = f"{cc[0]}.{cc[1]}" if isinstance(cc, tuple | list) and len(cc) == 2 else ""
            infos.append(
                GpuInfo(
                    index=index,
                    uuid=uuid,
                    name=text(name) if isinstance(name, str | bytes) else "",
                    pci_bus_id=bus_id,
                    mig_enabled=mig_enabled,
                    instances=instances,
                    compute_capability=cc_text,
                )
            )
            handles[uuid] = handle
            self._by_key[handle_key(handle)] = uuid
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
                        uuid=text(nvml.nvmlDeviceGetUUID(mig)),
                        gpu_instance_id=int(nvml.nvmlDeviceGetGpuInstanceId(mig)),
                        compute_instance_id=int(nvml.nvmlDeviceGetComputeInstanceId(mig)),
                    )
                )
            except Exception as exc:  # NOT_FOUND for empty slots, or not visible to us
                if not nvml_errors.is_nvml_error(self._nvml, exc):
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
            ecc=nvml_signals.ecc(nvml, uuid, h),
            remap=nvml_signals.remap(nvml, uuid, h),
            retired_pages_pending=nvml_signals.map_reading(
                self._read(uuid, nvml.nvmlDeviceGetRetiredPagesPendingStatus, h), bool
            ),
            recovery_action=nvml_signals.recovery_action(nvml, uuid, h),
            memory=nvml_signals.memory(nvml, uuid, h),
            temperature_c=nvml_signals.temperature(nvml, uuid, h),
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
            clock_event_reasons=nvml_signals.clocks(nvml, uuid, h),
            compute_mode=nvml_signals.map_reading(self._read(uuid, nvml.nvmlDeviceGetComputeMode, h), int),
            utilization_gpu_pct=nvml_signals.map_reading(
                self._read(uuid, nvml.nvmlDeviceGetUtilizationRates, h), lambda u: int(u.gpu)
            ),
            pcie_replay_count=nvml_signals.map_reading(
                self._read(uuid, nvml.nvmlDeviceGetPcieReplayCounter, h), int
            ),
            processes=nvml_signals.map_reading(
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
            power_violation_s=nvml_signals.violation(
                nvml, uuid, h, getattr(nvml, "NVML_PERF_POLICY_POWER", 0)
            ),
            thermal_violation_s=nvml_signals.violation(
                nvml, uuid, h, getattr(nvml, "NVML_PERF_POLICY_THERMAL", 1)
            ),
            sm_clock_mhz=nvml_signals.optional(
                nvml, uuid, "nvmlDeviceGetClockInfo", h, getattr(nvml, "NVML_CLOCK_SM", 1)
            ),
            sm_clock_max_mhz=nvml_signals.optional(
                nvml, uuid, "nvmlDeviceGetMaxClockInfo", h, getattr(nvml, "NVML_CLOCK_SM", 1)
            ),
        )

    def validate_inforom(self, uuid: str) -> Reading[bool]:
        h = self._handle(uuid)
        try:
            self._nvml.nvmlDeviceValidateInforom(h)
        except Exception as exc:
            if not nvml_errors.is_nvml_error(self._nvml, exc):
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
                if not nvml_errors.is_nvml_error(self._nvml, exc):
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
            if not nvml_errors.is_nvml_error(self._nvml, exc):
                raise
            err = self.translate(exc)
            if isinstance(err, NvmlTimeoutError):
                return None  # timeout, or an interrupt that returned early
            if isinstance(err, Unsupported):
                raise NvmlError(str(exc), code=NOT_SUPPORTED) from exc
            raise err from exc
        uuid = self._by_key.get(handle_key(data.device), "")
        return GpuEvent(
            uuid=uuid,
            event_type=int(data.eventType),
            data=int(data.eventData),
            gpu_instance_id=int(getattr(data, "gpuInstanceId", 0xFFFFFFFF)),
            compute_instance_id=int(getattr(data, "computeInstanceId", 0xFFFFFFFF)),
            wall_time=self._wall(),
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
