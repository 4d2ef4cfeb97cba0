"""The NVRTC kernel canary: a tiny kernel with a known answer on each of the pod's GPUs.

It proves the GPU computes correctly with no engine at all, which separates "GPU broken" from
"engine broken". Everything goes through ``cuda.bindings`` (driver API + NVRTC) on each
device's *primary* context (the one the CUDA runtime and TensorRT share); every return code is
checked and named (``CUDA_ERROR_ILLEGAL_ADDRESS``). Context, module, buffers and stream are
created once in ``load`` and kept between canaries.

Test-only faults (``gpu_fault``, honoured only when the worker runs with ``--allow-faults``):
``illegal_address`` launches a kernel that stores to address 0x10 (a real MMU fault, Xid 31,
sticky error 700 in this process); ``spin`` launches a kernel that spins on a flag that never
changes (a real hang; only SIGKILL ends it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sidecar.canary.golden import KERNEL_N, kernel_input
from sidecar.canary.worker.runners.base import LoadInfo, RunnerError, RunnerUnavailable

KERNEL_SOURCE = rb"""
extern "C" __global__ void canary(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = fmaf(x[i], x[i], (float)i);
}
extern "C" __global__ void spin(volatile int* flag) {
    while (*flag == 0) { }
}
extern "C" __global__ void poke_bad(int unused) {
    *(volatile int*)(0x10) = unused;
}
"""

# Errors after which CUDA says "any further CUDA work will return the same error": the
# process must be replaced (reference/tensorrt-anchors.md, section 6.1).
STICKY_ERRORS = frozenset(
    {
        "CUDA_ERROR_ILLEGAL_ADDRESS",
        "CUDA_ERROR_ASSERT",
        "CUDA_ERROR_HARDWARE_STACK_ERROR",
        "CUDA_ERROR_ILLEGAL_INSTRUCTION",
        "CUDA_ERROR_MISALIGNED_ADDRESS",
        "CUDA_ERROR_INVALID_ADDRESS_SPACE",
        "CUDA_ERROR_INVALID_PC",
        "CUDA_ERROR_LAUNCH_FAILED",
        "CUDA_ERROR_ECC_UNCORRECTABLE",
        "CUDA_ERROR_MPS_CLIENT_TERMINATED",
        "CUDA_ERROR_UNKNOWN",
    }
)

THREADS = 256


def cuda_reason(name: str) -> str:
    """Reason for a CUDA error name (memory exhaustion has its own)."""
    if name == "CUDA_ERROR_OUT_OF_MEMORY":
        return "InsufficientGpuMemory"
    if name in ("CUDA_ERROR_NO_DEVICE", "CUDA_ERROR_NOT_INITIALIZED", "CUDA_ERROR_NOT_FOUND"):
        return "NoGpu"
    return "CudaError"


def check(driver: Any, result: Any, what: str) -> Any:
    """Unpack a ``cuda.bindings.driver`` result tuple; raise a named error on failure."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != driver.CUresult.CUDA_SUCCESS:
        name = error_name(driver, err)
        raise RunnerError(
            cuda_reason(name),
            f"{what}: {name} ({int(err)})",
            cuda_error=name,
            sticky=name in STICKY_ERRORS,
        )
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def error_name(driver: Any, err: Any) -> str:
    try:
        res, raw = driver.cuGetErrorName(err)
        if res == driver.CUresult.CUDA_SUCCESS and raw:
            return raw.decode() if isinstance(raw, bytes) else str(raw)
    except Exception:  # naming must never hide the error itself
        pass
    return getattr(err, "name", f"CUDA_ERROR_{int(err)}")


def open_cuda(wanted: tuple[int, ...]) -> tuple[Any, Any, tuple[int, ...]]:
    """Import the CUDA driver and NVRTC bindings, ``cuInit``, and the device ordinals to use
    (``wanted``, or every visible device). No GPU or no bindings: :class:`RunnerUnavailable`;
    a wanted ordinal that is not visible: ``CanaryConfigInvalid``."""
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError as exc:
        raise RunnerUnavailable("RunnerUnavailable", f"cuda-bindings: {exc}") from exc
    try:
        init = driver.cuInit(0)
    except Exception as exc:  # no libcuda: cuda.pathfinder raises instead of returning
        raise RunnerUnavailable("NoGpu", f"CUDA driver library not found: {exc}") from exc
    if init[0] != driver.CUresult.CUDA_SUCCESS:
        name = error_name(driver, init[0])
        raise RunnerUnavailable("NoGpu", f"cuInit: {name}", cuda_error=name)
    count = check(driver, driver.cuDeviceGetCount(), "cuDeviceGetCount")
    if not count:
        raise RunnerUnavailable("NoGpu", "no CUDA device visible")
    ordinals = wanted or tuple(range(count))
    bad = [o for o in ordinals if o >= count]
    if bad:
        raise RunnerError("CanaryConfigInvalid", f"devices {bad} not visible ({count} seen)")
    return driver, nvrtc, ordinals


def compile_ptx(
    nvrtc: Any,
    source: bytes,
    *,
    name: bytes = b"canary.cu",
    options: Sequence[bytes] = (),
    failure: str = "NVRTC compile failed",
    log_chars: int | None = None,
) -> bytes:
    """NVRTC source -> PTX (JIT-compiled by the driver for each device). A failed compile
    raises ``CudaError`` saying ``failure`` and NVRTC's log (its first ``log_chars``)."""

    def ck(result: Any, what: str) -> Any:
        err = result[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RunnerError("CudaError", f"NVRTC {what}: {getattr(err, 'name', err)}")
        return result[1] if len(result) > 1 else None

    prog = ck(nvrtc.nvrtcCreateProgram(source, name, 0, [], []), "create")
    try:
        opts = list(options)
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            size = ck(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
            buf = b" " * size
            ck(nvrtc.nvrtcGetProgramLog(prog, buf), "log")
            text = buf.decode(errors="replace")[:log_chars]
            raise RunnerError("CudaError", f"{failure}: {text}")
        size = ck(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = b" " * size
        ck(nvrtc.nvrtcGetPTX(prog, ptx), "PTX")
        return bytes(ptx)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@dataclass
class _Device:
    ordinal: int
    name: str
    device: Any
    ctx: Any
    module: Any = None
    canary: Any = None
    spin: Any = None
    poke_bad: Any = None
    stream: Any = None
    d_x: Any = None
    d_y: Any = None
    d_flag: Any = None
    h_y: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))


class CudaKernelRunner:
    """Kernel canary on every visible CUDA device (or the configured ordinals)."""

    name = "cuda-kernel"

    def __init__(self, devices: tuple[int, ...] = ()) -> None:
        self.wanted = devices
        self._driver: Any = None
        self._devs: list[_Device] = []
        self._x = kernel_input()

    def load(self) -> LoadInfo:
        driver, nvrtc, ordinals = open_cuda(self.wanted)
        self._driver = driver
        ptx = compile_ptx(nvrtc, KERNEL_SOURCE)
        for ordinal in ordinals:
            self._devs.append(self._load_device(ordinal, ptx))
        names = ", ".join(f"{d.ordinal}:{d.name}" for d in self._devs)
        return LoadInfo(
            detail=f"NVRTC kernel canary on CUDA device(s) {names}",
            uses_gpu=True,
            labels={"devices": ",".join(str(d.ordinal) for d in self._devs)},
        )

    def _load_device(self, ordinal: int, ptx: bytes) -> _Device:
        drv = self._driver
        dev = check(drv, drv.cuDeviceGet(ordinal), f"cuDeviceGet({ordinal})")
        raw = check(drv, drv.cuDeviceGetName(64, dev), "cuDeviceGetName")
        name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else ""
        ctx = check(drv, drv.cuDevicePrimaryCtxRetain(dev), f"context on device {ordinal}")
        d = _Device(ordinal=ordinal, name=name, device=dev, ctx=ctx)
        check(drv, drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        d.module = check(drv, drv.cuModuleLoadData(ptx), "cuModuleLoadData")
        d.canary = check(drv, drv.cuModuleGetFunction(d.module, b"canary"), "canary function")
        d.spin = check(drv, drv.cuModuleGetFunction(d.module, b"spin"), "spin function")
        d.poke_bad = check(drv, drv.cuModuleGetFunction(d.module, b"poke_bad"), "poke function")
        d.stream = check(drv, drv.cuStreamCreate(0), "cuStreamCreate")
        nbytes = self._x.nbytes
        d.d_x = check(drv, drv.cuMemAlloc(nbytes), "cuMemAlloc(x)")
        d.d_y = check(drv, drv.cuMemAlloc(nbytes), "cuMemAlloc(y)")
        d.d_flag = check(drv, drv.cuMemAlloc(4), "cuMemAlloc(flag)")
        check(drv, drv.cuMemsetD32(d.d_flag, 0, 1), "cuMemsetD32")
        check(
            drv,
            drv.cuMemcpyHtoDAsync(d.d_x, self._x.ctypes.data, nbytes, d.stream),
            "copy golden input",
        )
        check(drv, drv.cuStreamSynchronize(d.stream), "cuStreamSynchronize")
        d.h_y = np.empty(KERNEL_N, np.float32)
        return d

    def _launch(self, d: _Device, fn: Any, argv: list[np.ndarray], blocks: int) -> None:
        drv = self._driver
        ptrs = np.array([a.ctypes.data for a in argv], dtype=np.uint64)
        check(
            drv,
            drv.cuLaunchKernel(fn, blocks, 1, 1, THREADS, 1, 1, 0, d.stream, ptrs.ctypes.data, 0),
            "cuLaunchKernel",
        )

    def infer(self, *, gpu_fault: str = "none") -> dict[str, np.ndarray]:
        drv = self._driver
        if not self._devs:
            raise RunnerError("RunnerNotLoaded", "infer before load")
        out: dict[str, np.ndarray] = {}
        for d in self._devs:
            check(drv, drv.cuCtxSetCurrent(d.ctx), "cuCtxSetCurrent")
            if gpu_fault == "spin":
                self._launch(d, d.spin, [np.array([int(d.d_flag)], np.uint64)], 1)
            elif gpu_fault == "illegal_address":
                self._launch(d, d.poke_bad, [np.array([1], np.int32)], 1)
            argv: list[np.ndarray] = [
                np.array([int(d.d_x)], np.uint64),
                np.array([int(d.d_y)], np.uint64),
                np.array([KERNEL_N], np.int32),
            ]
            check(drv, drv.cuMemsetD32Async(d.d_y, 0, KERNEL_N, d.stream), "clear output")
            self._launch(d, d.canary, argv, (KERNEL_N + THREADS - 1) // THREADS)
            check(
                drv,
                drv.cuMemcpyDtoHAsync(d.h_y.ctypes.data, d.d_y, d.h_y.nbytes, d.stream),
                "copy output",
            )
            # Kernel faults (illegal address ...) surface here, not at launch.
            check(drv, drv.cuStreamSynchronize(d.stream), f"stream sync on device {d.ordinal}")
            out[f"y@{d.ordinal}"] = d.h_y.copy()
        return out

    def close(self) -> None:
        drv = self._driver
        for d in self._devs:
            # Best effort: after a sticky error every call fails, and the process exits anyway.
            drv.cuCtxSetCurrent(d.ctx)
            for ptr in (d.d_x, d.d_y, d.d_flag):
                if ptr is not None:
                    drv.cuMemFree(ptr)
            if d.stream is not None:
                drv.cuStreamDestroy(d.stream)
            if d.module is not None:
                drv.cuModuleUnload(d.module)
            drv.cuDevicePrimaryCtxRelease(d.device)
        self._devs = []
