"""The CUDA runtime calls of the TensorRT runner (``cuda.bindings.runtime``): every return code
checked and translated into a :class:`RunnerError` in the driver API's vocabulary
(``CUDA_ERROR_ILLEGAL_ADDRESS``), so reasons and metrics are the same whichever API reported it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sidecar.canary.worker.runners.base import RunnerError
from sidecar.canary.worker.runners.cuda_kernel import STICKY_ERRORS, cuda_reason


def checked(rt: Any, result: Any, what: str, tail: Callable[[], str]) -> Any:
    """The value(s) of a runtime call's ``(error, *values)`` result; a failure raises, its
    message ending with ``tail()`` (what TensorRT said)."""
    err = result[0] if isinstance(result, tuple) else result
    if err != rt.cudaError_t.cudaSuccess:
        try:
            raw = rt.cudaGetErrorName(err)[1]
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
        except Exception:
            name = getattr(err, "name", str(err))
        driver_name = runtime_to_driver_name(name)
        raise RunnerError(
            cuda_reason(driver_name),
            f"{what}: {name} ({int(err)})" + tail(),
            cuda_error=driver_name,
            sticky=driver_name in STICKY_ERRORS,
        )
    values = result[1:] if isinstance(result, tuple) else ()
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def native_handle(stream: Any) -> int:
    """The ``cudaStream_t`` of a stream object as the integer TensorRT takes."""
    try:
        from cuda.bindings.utils import get_cuda_native_handle

        return int(get_cuda_native_handle(stream))
    except ImportError:
        return int(stream)


def runtime_to_driver_name(name: str) -> str:
    """``cudaErrorIllegalAddress`` -> ``CUDA_ERROR_ILLEGAL_ADDRESS`` (one vocabulary for
    reasons and metrics, whichever API reported it)."""
    if not name.startswith("cudaError"):
        return name
    special = {
        "cudaErrorMemoryAllocation": "CUDA_ERROR_OUT_OF_MEMORY",
        "cudaErrorNoDevice": "CUDA_ERROR_NO_DEVICE",
        "cudaErrorInsufficientDriver": "CUDA_ERROR_NO_DEVICE",
        "cudaErrorLaunchFailure": "CUDA_ERROR_LAUNCH_FAILED",
    }
    if name in special:
        return special[name]
    # a word starts at a capital after a lower-case letter or digit, or at the last capital of
    # an acronym (``ECCUncorrectable`` -> ``ECC_UNCORRECTABLE``, not ``E_C_C_...``)
    rest = name[len("cudaError") :]
    out: list[str] = []
    for i, ch in enumerate(rest):
        if ch.isupper() and i > 0:
            prev, nxt = rest[i - 1], rest[i + 1 : i + 2]
            if not prev.isupper() or (nxt and nxt.islower()):
                out.append("_")
        out.append(ch.upper())
    return "CUDA_ERROR_" + "".join(out)
