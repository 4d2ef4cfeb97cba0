"""Raise a real Xid 31 (MMU fault) on GPU 0 of ``CUDA_VISIBLE_DEVICES``: compile with NVRTC a
kernel that writes to address 0x10, launch it and synchronise (error 700,
CUDA_ERROR_ILLEGAL_ADDRESS). Prints one JSON line: ``launch`` and ``sync_returned`` (wall
times), ``launch_error``, ``sync_error``, ``cc``; or ``{"skip": why}`` when cuda-bindings are
missing.

Run it in a child process, never in a process that must not initialise CUDA (a test, the
sidecar): ``subprocess.run(xid31.command())`` or ``python -m sidecar.testing.xid31``. Used by
the GPU tests (tests/gpu) and the GPU benchmark (bench/gpu.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

SRC = b'extern "C" __global__ void bad(){ *((volatile int*)0x10) = 1; }'


def command(python: str = sys.executable) -> list[str]:
    """The argv of a child that runs :func:`main` (by file path: works from any directory)."""
    return [python, str(Path(__file__).resolve())]


def _ok(res: Any, what: str) -> Any:
    code = int(res[0])
    if code != 0:
        raise SystemExit(f"{what} failed: {res[0]}")
    return res[1] if len(res) == 2 else res[1:]


def main() -> int:
    try:
        import numpy as np
        from cuda.bindings import driver, nvrtc
    except Exception as exc:  # report and let the parent skip
        print(json.dumps({"skip": f"cuda-bindings not importable: {exc}"}), flush=True)
        return 0
    attr = driver.CUdevice_attribute
    _ok(driver.cuInit(0), "cuInit")
    dev = _ok(driver.cuDeviceGet(0), "cuDeviceGet")
    major = _ok(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev), "cc")
    minor = _ok(driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev), "cc")
    ctx = _ok(driver.cuDevicePrimaryCtxRetain(dev), "cuDevicePrimaryCtxRetain")
    _ok(driver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    prog = _ok(nvrtc.nvrtcCreateProgram(SRC, b"bad.cu", 0, [], []), "nvrtcCreateProgram")
    opts = [b"--gpu-architecture=compute_%d%d" % (major, minor)]
    res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
    if int(res[0]) != 0:
        size = nvrtc.nvrtcGetProgramLogSize(prog)[1]
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        raise SystemExit(f"nvrtc compile failed: {log.decode(errors='replace')}")
    size = _ok(nvrtc.nvrtcGetPTXSize(prog), "nvrtcGetPTXSize")
    ptx = b" " * size
    _ok(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    ptx_arr = np.char.array(ptx)
    module = _ok(driver.cuModuleLoadData(ptx_arr.ctypes.data), "cuModuleLoadData")
    kernel = _ok(driver.cuModuleGetFunction(module, b"bad"), "cuModuleGetFunction")
    launch = time.time()
    launch_err = driver.cuLaunchKernel(kernel, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0)[0]
    (sync_err,) = driver.cuCtxSynchronize()
    sync_returned = time.time()
    report = {
        "launch": launch,
        "sync_returned": sync_returned,
        "launch_error": int(launch_err),
        "sync_error": int(sync_err),
        "cc": f"{major}.{minor}",
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
