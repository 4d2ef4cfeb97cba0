"""TensorRT runner (10.x / 11.x API): deserialize a plan, create one execution context, run the
golden input through it on a private stream, keep everything between canaries.

Only the name-based I/O API is used (``num_io_tensors``, ``get_tensor_name``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``); buffers and the stream come
from ``cuda.bindings.runtime`` with every return code checked
(:mod:`sidecar.canary.worker.runners.cuda_runtime`). A capturing logger and an error recorder
turn TensorRT's own messages into reasons; modules are tried in order ``tensorrt``,
``tensorrt_lean``, ``tensorrt_lean_bindings`` (both in
:mod:`sidecar.canary.worker.runners.tensorrt_module`).

The lean runtime runs only version-compatible plans, and those carry a copy of the lean runtime
that executes code from the plan: loading them needs ``engine_host_code_allowed = True``, which
this runner sets only when the config says ``allow_engine_host_code: true`` (default false).

Every TensorRT attribute this module and ``tensorrt_module`` touch is listed in :data:`TRT_API`;
``tests/unit/test_tensorrt_conformance.py`` checks them against the real ``tensorrt_lean``
classes, so the list and the code cannot drift apart silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sidecar.canary.worker.runners.base import LoadInfo, RunnerError, RunnerUnavailable, load_golden_inputs
from sidecar.canary.worker.runners.cuda_runtime import checked, native_handle
from sidecar.canary.worker.runners.tensorrt_module import import_tensorrt, make_logger, make_recorder
from sidecar.engine.manifest import EngineManifest

# TensorRT DataType name -> numpy dtype (types numpy lacks are refused at load).
_NP_DTYPES = {
    "FLOAT": np.float32,
    "HALF": np.float16,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "BOOL": np.bool_,
    "UINT8": np.uint8,
}

# (class or enum name on the module, attributes used on it). Read by the conformance test,
# which also scans this file so that no attribute is used without being listed here.
TRT_API: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Runtime", ("deserialize_cuda_engine", "error_recorder", "engine_host_code_allowed")),
    (
        "ICudaEngine",
        (
            "num_io_tensors",
            "get_tensor_name",
            "get_tensor_mode",
            "get_tensor_dtype",
            "get_tensor_location",
            "get_tensor_format",
            "num_optimization_profiles",
            "create_execution_context",
        ),
    ),
    (
        "IExecutionContext",
        (
            "set_optimization_profile_async",
            "set_input_shape",
            "infer_shapes",
            "get_tensor_shape",
            "set_tensor_address",
            "update_device_memory_size_for_shapes",
            "set_device_memory",
            "execute_async_v3",
        ),
    ),
    ("ILogger", ("log", "Severity")),
    (
        "IErrorRecorder",
        ("report_error", "num_errors", "get_error_code", "get_error_desc", "has_overflowed", "clear"),
    ),
    ("TensorIOMode", ("INPUT", "OUTPUT")),
    ("TensorLocation", ("DEVICE",)),
    ("DataType", tuple(_NP_DTYPES)),
    ("ExecutionContextAllocationStrategy", ("USER_MANAGED",)),
)


@dataclass
class _Buffers:
    host: dict[str, np.ndarray]
    dev: dict[str, int]
    scratch: int = 0
    scratch_size: int = 0


class TensorRTRunner:
    """One plan (the tiny canary plan, or the opt-in production engine with a budget)."""

    name = "tensorrt"

    def __init__(
        self,
        manifest: EngineManifest,
        *,
        device: int = 0,
        allow_engine_host_code: bool = False,
        memory_budget_bytes: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.device = device
        self.allow_engine_host_code = allow_engine_host_code
        self.memory_budget_bytes = memory_budget_bytes
        self._trt: Any = None
        self._rt: Any = None
        self._logger: Any = None
        self._recorder: Any = None
        self._runtime: Any = None
        self._engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._buffers: _Buffers | None = None
        self._inputs: list[str] = []
        self._inputs_host: dict[str, np.ndarray] = {}
        self._outputs: list[str] = []

    # --- CUDA runtime helpers --------------------------------------------------------------

    def _ck(self, result: Any, what: str) -> Any:
        return checked(self._rt, result, what, self._trt_tail)

    def _stream_handle(self) -> int:
        return native_handle(self._stream)

    def _trt_tail(self) -> str:
        texts: list[str] = []
        if self._recorder is not None:
            texts.extend(self._recorder.texts()[-3:])
        if self._logger is not None:
            texts.extend(self._logger.errors()[-3:])
        return (" | TensorRT: " + " | ".join(texts)) if texts else ""

    def _trt_error(self, reason: str, what: str) -> RunnerError:
        detail = self._trt_tail() or " (TensorRT logged no error)"
        return RunnerError(reason, f"{what}{detail}", labels={"engine": self.manifest.name})

    # --- runner protocol -------------------------------------------------------------------

    def load(self) -> LoadInfo:
        if self.manifest.format != "tensorrt-plan":
            raise RunnerError(
                "CanaryConfigInvalid",
                f"manifest {self.manifest.name} is {self.manifest.format}, need tensorrt-plan",
            )
        trt = import_tensorrt()
        self._trt = trt
        try:
            from cuda.bindings import runtime as rt
        except ImportError as exc:
            raise RunnerUnavailable("RunnerUnavailable", f"cuda-bindings: {exc}") from exc
        self._rt = rt
        # Create the CUDA context first: TensorRT segfaults on deserialise without a GPU.
        try:
            self._ck(rt.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
            self._ck(rt.cudaFree(0), "CUDA context")
        except RunnerError as exc:
            if exc.reason == "NoGpu":
                raise RunnerUnavailable(exc.reason, exc.message) from exc
            raise
        except Exception as exc:  # no libcuda: cuda.pathfinder raises
            raise RunnerUnavailable("NoGpu", f"CUDA runtime unavailable: {exc}") from exc
        self._inputs_host = load_golden_inputs(self.manifest)
        plan = self._read_plan()
        free, total = self._ck(rt.cudaMemGetInfo(), "cudaMemGetInfo")
        self._check_memory("plan weights", len(plan), free, total)
        self._logger = make_logger(trt)
        self._recorder = make_recorder(trt)
        try:
            self._runtime = trt.Runtime(self._logger)
        except TypeError as exc:  # factory returned nullptr: CUDA init failed inside TensorRT
            raise self._trt_error("TensorRTUnavailable", f"trt.Runtime failed: {exc}") from exc
        self._runtime.error_recorder = self._recorder
        self._runtime.engine_host_code_allowed = self.allow_engine_host_code
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        del plan
        if self._engine is None:
            hint = ""
            if self.manifest.version_compatible and not self.allow_engine_host_code:
                hint = " (version-compatible plan: needs allow_engine_host_code: true)"
            raise self._trt_error("EngineDeserializeFailed", f"deserialize {self.manifest.file}{hint}")
        self._bind_io()
        self._context = self._engine.create_execution_context(
            trt.ExecutionContextAllocationStrategy.USER_MANAGED
        )
        if self._context is None:
            raise self._trt_error("ExecutionContextFailed", "create_execution_context")
        self._stream = self._ck(rt.cudaStreamCreate(), "cudaStreamCreate")
        self._allocate(free, total)
        return LoadInfo(
            detail=(
                f"{trt.__name__} {getattr(trt, '__version__', '?')}, engine "
                f"{self.manifest.file} on CUDA device {self.device}"
            ),
            uses_gpu=True,
            labels={"engine": self.manifest.name},
        )

    def _read_plan(self) -> bytes:
        try:
            return self.manifest.path.read_bytes()
        except OSError as exc:
            raise RunnerError("EngineMissing", f"{self.manifest.path}: {exc}") from exc

    def _check_memory(self, what: str, need: int, free: int, total: int) -> None:
        mib = 1 << 20
        if self.memory_budget_bytes is not None and need > self.memory_budget_bytes:
            raise RunnerError(
                "MemoryBudgetExceeded",
                f"{what} need {need / mib:.0f} MiB, budget {self.memory_budget_bytes / mib:.0f} MiB",
                labels={"engine": self.manifest.name},
            )
        if need > free:
            raise RunnerError(
                "InsufficientGpuMemory",
                f"{what} need {need / mib:.0f} MiB, GPU {self.device} has "
                f"{free / mib:.0f} MiB free of {total / mib:.0f} MiB",
                labels={"engine": self.manifest.name},
            )

    def _bind_io(self) -> None:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        for n in names:
            fmt = engine.get_tensor_format(n)
            if (
                engine.get_tensor_location(n) != trt.TensorLocation.DEVICE
                or getattr(fmt, "name", str(fmt)).rsplit(".", 1)[-1] != "LINEAR"
            ):
                raise RunnerError(
                    "EngineIoMismatch",
                    f"{n}: host shape tensors and vectorized formats are not supported",
                )
            dtype = getattr(engine.get_tensor_dtype(n), "name", "?")
            if dtype not in _NP_DTYPES:
                raise RunnerError("EngineIoMismatch", f"{n}: dtype {dtype} has no numpy type")
        want_in = {t.name for t in self.manifest.inputs}
        want_out = {t.name for t in self.manifest.outputs}
        if (want_in and want_in != set(self._inputs)) or (want_out and not want_out <= set(self._outputs)):
            raise RunnerError(
                "EngineIoMismatch",
                f"engine I/O inputs={self._inputs} outputs={self._outputs}, "
                f"manifest inputs={sorted(want_in)} outputs={sorted(want_out)}",
            )

    def _allocate(self, free: int, total: int) -> None:
        rt, engine, ctx = self._rt, self._engine, self._context
        if engine.num_optimization_profiles > 1:
            try:
                ctx.set_optimization_profile_async(0, self._stream_handle())
            except RuntimeError as exc:
                raise self._trt_error("EngineIoMismatch", f"optimization profile 0: {exc}") from exc
        host: dict[str, np.ndarray] = {}
        for n in self._inputs:
            dt = _NP_DTYPES[engine.get_tensor_dtype(n).name]
            host[n] = np.ascontiguousarray(self._inputs_host[n], dtype=dt)
            if not ctx.set_input_shape(n, host[n].shape):
                raise self._trt_error("EngineIoMismatch", f"set_input_shape({n}, {host[n].shape})")
        missing = ctx.infer_shapes()
        if missing:
            raise self._trt_error("EngineIoMismatch", f"unspecified input shapes: {missing}")
        for n in self._outputs:
            shape = tuple(ctx.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise RunnerError("EngineIoMismatch", f"{n}: data-dependent output shape {shape}")
            host[n] = np.empty(shape, _NP_DTYPES[engine.get_tensor_dtype(n).name])
        bufs = _Buffers(host=host, dev={})
        self._buffers = bufs
        for n, arr in host.items():
            bufs.dev[n] = int(self._ck(rt.cudaMalloc(max(arr.nbytes, 1)), f"cudaMalloc({n})"))
            if not ctx.set_tensor_address(n, bufs.dev[n]):
                raise self._trt_error("EngineIoMismatch", f"set_tensor_address({n})")
        size = int(ctx.update_device_memory_size_for_shapes())
        io_bytes = sum(a.nbytes for a in host.values())
        plan_bytes = self.manifest.path.stat().st_size
        self._check_memory("activations + I/O", size + io_bytes, free, total)
        if self.memory_budget_bytes is not None:
            self._check_memory("engine total", plan_bytes + size + io_bytes, free, total)
        if size:
            bufs.scratch = int(self._ck(rt.cudaMalloc(size), "cudaMalloc(activations)"))
            bufs.scratch_size = size
        ctx.set_device_memory(bufs.scratch, size)

    def infer(self, *, gpu_fault: str = "none") -> dict[str, np.ndarray]:
        rt, bufs, ctx = self._rt, self._buffers, self._context
        if bufs is None or ctx is None:
            raise RunnerError("RunnerNotLoaded", "infer before load")
        self._recorder.clear()
        self._ck(rt.cudaSetDevice(self.device), "cudaSetDevice")
        h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self._inputs:
            a = bufs.host[n]
            self._ck(
                rt.cudaMemcpyAsync(bufs.dev[n], a.ctypes.data, a.nbytes, h2d, self._stream),
                f"copy {n} to device",
            )
        if not ctx.execute_async_v3(self._stream_handle()):
            raise self._trt_error("InferenceFailed", "execute_async_v3 could not enqueue")
        for n in self._outputs:
            a = bufs.host[n]
            self._ck(
                rt.cudaMemcpyAsync(a.ctypes.data, bufs.dev[n], a.nbytes, d2h, self._stream),
                f"copy {n} to host",
            )
        self._ck(rt.cudaStreamSynchronize(self._stream), "stream sync")
        if self._recorder.get_num_errors():
            raise self._trt_error("InferenceFailed", "TensorRT recorded errors during the canary")
        return {n: bufs.host[n].copy() for n in self._outputs}

    def close(self) -> None:
        rt = self._rt
        self._context = None  # the context before the memory it uses
        if self._buffers is not None and rt is not None:
            for ptr in [*self._buffers.dev.values(), self._buffers.scratch]:
                if ptr:
                    rt.cudaFree(ptr)
        self._buffers = None
        if self._stream is not None and rt is not None:
            rt.cudaStreamDestroy(self._stream)
            self._stream = None
        self._engine = None
        self._runtime = None
