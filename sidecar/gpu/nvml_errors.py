"""NVML errors translated at the boundary of :class:`sidecar.gpu.real.RealNvmlBackend`: an
``NVMLError`` return code becomes the project's :class:`sidecar.gpu.backend.NvmlError` subclass,
:data:`UNSUPPORTED`, or (for one signal) a :class:`SignalError`. Each function takes the NVML
module (``pynvml`` or a fake with the same names), so the translation is unit-tested without a GPU.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, TypeVar

from sidecar.gpu.backend import (
    UNSUPPORTED,
    DriverNotLoadedError,
    DriverVersionMismatchError,
    GpuLostError,
    NvmlError,
    NvmlTimeoutError,
    NvmlUnavailableError,
    Reading,
    ResetRequiredError,
    SignalError,
    Unsupported,
)

T = TypeVar("T")

# NVML return codes (nvml.h); the injected module's constants are used when it has them.
NOT_SUPPORTED = 3
UNINITIALIZED = 1
NO_PERMISSION = 4
NOT_FOUND = 6
DRIVER_NOT_LOADED = 9
TIMEOUT = 10
LIBRARY_NOT_FOUND = 12
FUNCTION_NOT_FOUND = 13
GPU_IS_LOST = 15
RESET_REQUIRED = 16
LIB_RM_VERSION_MISMATCH = 18
ARGUMENT_VERSION_MISMATCH = 25

FI_DEV_GET_GPU_RECOVERY_ACTION = 230


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def handle_key(handle: Any) -> int:
    """A hashable identity for an NVML device handle (a ctypes pointer, or a fake's object)."""
    try:
        key = ctypes.cast(handle, ctypes.c_void_p).value
    except (TypeError, ctypes.ArgumentError):
        return id(handle)
    return key if key is not None else id(handle)


def field_value(field: Any) -> int:
    """The integer in a ``c_nvmlFieldValue_t`` according to its ``valueType``."""
    value = field.value
    by_type = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    attr = by_type.get(int(getattr(field, "valueType", 1)), "uiVal")
    return int(getattr(value, attr))


def _code(nvml: Any, name: str, default: int) -> int:
    return int(getattr(nvml, name, default))


def translate(nvml: Any, exc: BaseException, uuid: str | None = None) -> NvmlError | Unsupported:
    """Map an ``NVMLError`` (or anything else) to the project's error or UNSUPPORTED."""
    code = int(getattr(exc, "value", -1))
    text = str(exc) or type(exc).__name__
    if code in (
        _code(nvml, "NVML_ERROR_NOT_SUPPORTED", NOT_SUPPORTED),
        _code(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", FUNCTION_NOT_FOUND),
    ):
        return UNSUPPORTED
    if code == _code(nvml, "NVML_ERROR_GPU_IS_LOST", GPU_IS_LOST):
        return GpuLostError(text, code=code, uuid=uuid)
    if code == _code(nvml, "NVML_ERROR_RESET_REQUIRED", RESET_REQUIRED):
        return ResetRequiredError(text, code=code, uuid=uuid)
    if code == _code(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", DRIVER_NOT_LOADED):
        return DriverNotLoadedError(text, code=code)
    if code == _code(nvml, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", LIB_RM_VERSION_MISMATCH):
        return DriverVersionMismatchError(text, code=code)
    if code in (
        _code(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", LIBRARY_NOT_FOUND),
        _code(nvml, "NVML_ERROR_UNINITIALIZED", UNINITIALIZED),
    ):
        return NvmlUnavailableError(text, code=code)
    if code == _code(nvml, "NVML_ERROR_TIMEOUT", TIMEOUT):
        return NvmlTimeoutError(text, code=code, uuid=uuid)
    return NvmlError(text, code=code, uuid=uuid)


def is_nvml_error(nvml: Any, exc: BaseException) -> bool:
    cls = getattr(nvml, "NVMLError", None)
    return isinstance(cls, type) and isinstance(exc, cls)


def call(nvml: Any, uuid: str | None, fn: Callable[..., T], *args: Any) -> T:
    """Call NVML; raise the translated error (UNSUPPORTED becomes a plain NvmlError 3)."""
    try:
        return fn(*args)
    except Exception as exc:
        if not is_nvml_error(nvml, exc):
            raise
        err = translate(nvml, exc, uuid)
        if isinstance(err, Unsupported):
            raise NvmlError(str(exc), code=NOT_SUPPORTED, uuid=uuid) from exc
        raise err from exc


def read(nvml: Any, uuid: str, fn: Callable[..., T], *args: Any) -> Reading[T]:
    """One signal: value, UNSUPPORTED, or SignalError; device-level errors propagate."""
    try:
        return fn(*args)
    except Exception as exc:
        if not is_nvml_error(nvml, exc):
            return SignalError("NvmlError", f"{type(exc).__name__}: {exc}")
        err = translate(nvml, exc, uuid)
        if isinstance(err, Unsupported):
            return UNSUPPORTED
        if isinstance(err, GpuLostError | ResetRequiredError | NvmlUnavailableError):
            raise err from exc
        reason = "NvmlNoPermission" if err.code == NO_PERMISSION else err.reason
        return SignalError(reason, err.text)


class ReturnCode(Exception):
    """A bare NVML return code from a field value, shaped like an NVMLError for translate()."""

    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value
