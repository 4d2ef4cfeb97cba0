"""The NVRTC compile both CUDA canaries share (cuda_kernel.compile_ptx), against a recording
fake of ``cuda.bindings.nvrtc``: what each canary asks NVRTC for, and what a failed compile
says (the kernel canary's whole log, the tensor-core canary's first 2,000 characters)."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from sidecar.canary.worker.runners.base import RunnerError
from sidecar.canary.worker.runners.cuda_kernel import KERNEL_SOURCE, compile_ptx
from sidecar.canary.worker.runners.tensor_core import TC_SOURCE, compile_tc_ptx


class FakeNvrtc:
    """Records every call; ``log`` set means the compile fails with that log."""

    class nvrtcResult(enum.Enum):
        NVRTC_SUCCESS = 0
        NVRTC_ERROR_COMPILATION = 6

    def __init__(self, log: bytes | None = None) -> None:
        self.log = log
        self.calls: list[tuple[Any, ...]] = []

    def nvrtcCreateProgram(self, *args: Any) -> tuple[Any, str]:
        self.calls.append(("create", *args))
        return self.nvrtcResult.NVRTC_SUCCESS, "prog"

    def nvrtcCompileProgram(self, prog: str, n: int, opts: list[bytes]) -> tuple[Any]:
        self.calls.append(("compile", prog, n, list(opts)))
        failed = self.log is not None
        return (self.nvrtcResult.NVRTC_ERROR_COMPILATION if failed else self.nvrtcResult.NVRTC_SUCCESS,)

    def nvrtcGetProgramLogSize(self, prog: str) -> tuple[Any, int]:
        return self.nvrtcResult.NVRTC_SUCCESS, len(self.log or b"")

    def nvrtcGetProgramLog(self, prog: str, buf: bytes) -> tuple[Any]:
        # the real binding writes the log into ``buf`` in place; a fake cannot fill a bytes
        return (self.nvrtcResult.NVRTC_SUCCESS,)

    def nvrtcGetPTXSize(self, prog: str) -> tuple[Any, int]:
        return self.nvrtcResult.NVRTC_SUCCESS, 4

    def nvrtcGetPTX(self, prog: str, buf: bytes) -> tuple[Any]:
        return (self.nvrtcResult.NVRTC_SUCCESS,)

    def nvrtcDestroyProgram(self, prog: str) -> tuple[Any]:
        self.calls.append(("destroy", prog))
        return (self.nvrtcResult.NVRTC_SUCCESS,)


def test_kernel_canary_compiles_with_no_options() -> None:
    """The kernel canary's program is canary.cu, compiled with no options, then destroyed."""
    nvrtc = FakeNvrtc()
    assert compile_ptx(nvrtc, KERNEL_SOURCE) == b"    "
    assert nvrtc.calls == [
        ("create", KERNEL_SOURCE, b"canary.cu", 0, [], []),
        ("compile", "prog", 0, []),
        ("destroy", "prog"),
    ]


def test_tensor_core_canary_compiles_for_its_architecture() -> None:
    """The tensor-core canary's program is tc_canary.cu, compiled for the device's compute_XY."""
    nvrtc = FakeNvrtc()
    compile_tc_ptx(nvrtc, "compute_90")
    assert nvrtc.calls == [
        ("create", TC_SOURCE, b"tc_canary.cu", 0, [], []),
        ("compile", "prog", 1, [b"--gpu-architecture=compute_90"]),
        ("destroy", "prog"),
    ]


def test_a_failed_compile_says_which_canary_and_how_much_log() -> None:
    """A failed compile raises CudaError with the log (blank here: the fake cannot fill the
    caller's buffer): the kernel canary's whole, the tensor-core canary's cut at 2,000."""
    nvrtc = FakeNvrtc(log=b"x" * 3000)
    with pytest.raises(RunnerError) as kernel:
        compile_ptx(nvrtc, KERNEL_SOURCE)
    assert kernel.value.reason == "CudaError"
    assert kernel.value.message == "NVRTC compile failed: " + " " * 3000
    assert nvrtc.calls[-1] == ("destroy", "prog")
    with pytest.raises(RunnerError) as tc:
        compile_tc_ptx(nvrtc, "compute_80")
    assert tc.value.reason == "CudaError"
    assert tc.value.message == "NVRTC compile of the tensor-core canary failed: " + " " * 2000
    assert nvrtc.calls[-1] == ("destroy", "prog")
