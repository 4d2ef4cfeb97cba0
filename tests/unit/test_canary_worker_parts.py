"""The canary worker's parts that need no GPU and no child process: the CUDA runtime error
translation of the TensorRT runner (sidecar/canary/worker/runners/cuda_runtime.py), the
simulated output faults (faults.py) and the runner selection's refusals (selection.py)."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.canary.protocol import FaultSpec, LoadRequest
from sidecar.canary.worker import faults
from sidecar.canary.worker.runners.base import RunnerError, RunnerUnavailable
from sidecar.canary.worker.runners.cuda_kernel import STICKY_ERRORS
from sidecar.canary.worker.runners.cuda_runtime import checked, runtime_to_driver_name
from sidecar.canary.worker.selection import build_production, build_runner, manifest


@pytest.mark.parametrize(
    ("runtime", "driver"),
    [
        ("cudaErrorIllegalAddress", "CUDA_ERROR_ILLEGAL_ADDRESS"),
        ("cudaErrorMemoryAllocation", "CUDA_ERROR_OUT_OF_MEMORY"),
        ("cudaErrorNoDevice", "CUDA_ERROR_NO_DEVICE"),
        ("cudaErrorInsufficientDriver", "CUDA_ERROR_NO_DEVICE"),
        ("cudaErrorLaunchFailure", "CUDA_ERROR_LAUNCH_FAILED"),
        ("CUDA_ERROR_ASSERT", "CUDA_ERROR_ASSERT"),  # already the driver's name
        # acronyms stay one word (they used to become CUDA_ERROR_E_C_C_..., missing the sticky set)
        ("cudaErrorECCUncorrectable", "CUDA_ERROR_ECC_UNCORRECTABLE"),
        ("cudaErrorMpsClientTerminated", "CUDA_ERROR_MPS_CLIENT_TERMINATED"),
        ("cudaErrorInvalidPc", "CUDA_ERROR_INVALID_PC"),
        ("cudaErrorNvlinkUncorrectable", "CUDA_ERROR_NVLINK_UNCORRECTABLE"),
    ],
)
def test_runtime_error_names_in_the_driver_vocabulary(runtime: str, driver: str) -> None:
    assert runtime_to_driver_name(runtime) == driver


def test_an_uncorrectable_ecc_error_from_the_runtime_api_is_sticky() -> None:
    """The TensorRT runner reports runtime-API errors: an uncorrectable ECC error there poisons
    the context as it does from the driver API (the worker must be replaced)."""
    assert runtime_to_driver_name("cudaErrorECCUncorrectable") in STICKY_ERRORS


class FakeError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorIllegalAddress = 700
    cudaErrorMemoryAllocation = 2


class FakeRuntime:
    """The two things checked() asks of cuda.bindings.runtime."""

    cudaError_t = FakeError

    @staticmethod
    def cudaGetErrorName(err: FakeError) -> tuple[FakeError, bytes]:
        return FakeError.cudaSuccess, err.name.encode()


@pytest.mark.parametrize(
    ("result", "value"),
    [
        ((FakeError.cudaSuccess,), None),
        (FakeError.cudaSuccess, None),
        ((FakeError.cudaSuccess, 42), 42),
        ((FakeError.cudaSuccess, 1, 2), (1, 2)),
    ],
)
def test_checked_returns_the_values_of_a_success(result: Any, value: Any) -> None:
    def tail() -> str:
        raise AssertionError("the tail is read only on a failure")

    assert checked(FakeRuntime, result, "call", tail) == value


@pytest.mark.parametrize(
    ("err", "reason", "sticky"),
    [
        (FakeError.cudaErrorIllegalAddress, "CudaError", True),
        (FakeError.cudaErrorMemoryAllocation, "InsufficientGpuMemory", False),
    ],
)
def test_checked_raises_a_named_error_ending_with_what_tensorrt_said(
    err: FakeError, reason: str, sticky: bool
) -> None:
    with pytest.raises(RunnerError) as info:
        checked(FakeRuntime, (err, 0), "stream sync", lambda: " | TensorRT: boom")
    exc = info.value
    assert (exc.reason, exc.sticky) == (reason, sticky)
    assert exc.message == f"stream sync: {err.name} ({int(err)}) | TensorRT: boom"
    assert exc.cuda_error == runtime_to_driver_name(err.name)


ARR = np.array([1.5, 2.0, -3.0], dtype=np.float32)


@pytest.mark.parametrize("fault", [None, FaultSpec(), FaultSpec(mode="slow"), FaultSpec(mode="leak")])
def test_outputs_unchanged_without_an_output_fault(fault: FaultSpec | None) -> None:
    out = faults.on_outputs(fault, {"y": ARR})
    assert out["y"].tobytes() == ARR.tobytes()


def test_wrong_outputs_are_visibly_off_in_one_element() -> None:
    out = faults.on_outputs(FaultSpec(mode="wrong"), {"y": ARR})["y"]
    assert out[0] == pytest.approx(1.5 + 1.5 * 0.5 + 1) and (out[1:] == ARR[1:]).all()
    assert ARR[0] == 1.5  # the runner's array is not changed


def test_drifted_outputs_differ_in_the_lowest_bit_only() -> None:
    out = faults.on_outputs(FaultSpec(mode="drift"), {"y": ARR})["y"]
    assert out.tobytes() != ARR.tobytes() and np.allclose(out, ARR, rtol=1e-6, atol=0)
    assert int(out.view(np.uint32)[0]) ^ int(ARR.view(np.uint32)[0]) == 1


@pytest.mark.parametrize(
    "arr", [np.array([], dtype=np.float32), np.array([b"abc"], dtype="S3")], ids=["empty", "3-byte items"]
)
def test_drift_leaves_what_it_cannot_flip(arr: np.ndarray) -> None:
    assert faults.flip_lowest_bit(arr).tobytes() == arr.tobytes()


def test_manifest_refusals_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(RunnerError) as none:
        manifest(None, "ONNX canary")
    assert none.value.reason == "CanaryConfigInvalid"
    with pytest.raises(RunnerUnavailable) as missing:
        manifest(str(tmp_path / "absent.yaml"), "ONNX canary")
    assert missing.value.reason == "EngineMissing"
    broken = tmp_path / "broken.yaml"
    broken.write_text("[not a manifest")
    with pytest.raises(RunnerError) as invalid:
        manifest(str(broken), "ONNX canary")
    assert invalid.value.reason == "ManifestInvalid" and str(broken) in invalid.value.message


def test_unknown_runner_and_no_production_engine() -> None:
    req = LoadRequest("mystery", None, None)
    with pytest.raises(RunnerError) as info:
        build_runner(req, "mystery")
    assert info.value.reason == "CanaryConfigInvalid"
    assert build_production(req) is None
