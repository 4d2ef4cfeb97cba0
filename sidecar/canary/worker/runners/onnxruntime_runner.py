"""ONNX Runtime on CPU: the same canary model and golden files as the GPU runners, so the
whole supervisor / worker / verification path runs for real on machines without a GPU."""

from __future__ import annotations

from typing import Any

import numpy as np

from sidecar.canary.worker.runners.base import LoadInfo, RunnerError, RunnerUnavailable, load_golden_inputs
from sidecar.engine.manifest import EngineManifest


class OnnxRuntimeRunner:
    """Runs an ONNX model manifest with ``CPUExecutionProvider``, one thread."""

    name = "onnxruntime"

    def __init__(self, manifest: EngineManifest) -> None:
        self.manifest = manifest
        self._session: Any = None
        self._inputs: dict[str, np.ndarray] = {}
        self._output_names: list[str] = []

    def load(self) -> LoadInfo:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RunnerUnavailable("RunnerUnavailable", f"onnxruntime: {exc}") from exc
        if self.manifest.format != "onnx":
            raise RunnerError(
                "CanaryConfigInvalid",
                f"manifest {self.manifest.name} is {self.manifest.format}, onnxruntime needs onnx",
            )
        self._inputs = load_golden_inputs(self.manifest)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # the canary must stay cheap next to the real server
        opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(
                str(self.manifest.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise RunnerError(
                "EngineLoadFailed", f"onnxruntime could not load {self.manifest.file}: {exc}"
            ) from exc
        names = [o.name for o in self._session.get_outputs()]
        wanted = [o.name for o in self.manifest.outputs] or names
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise RunnerError("EngineIoMismatch", f"model has no output(s) {unknown}; it has {names}")
        self._output_names = wanted
        return LoadInfo(detail=f"onnxruntime {ort.__version__} CPU, model {self.manifest.file}")

    def infer(self, *, gpu_fault: str = "none") -> dict[str, np.ndarray]:
        if self._session is None:
            raise RunnerError("RunnerNotLoaded", "infer before load")
        try:
            values = self._session.run(self._output_names, self._inputs)
        except Exception as exc:
            raise RunnerError("InferenceFailed", f"onnxruntime: {exc}") from exc
        return {n: np.asarray(v) for n, v in zip(self._output_names, values, strict=True)}

    def close(self) -> None:
        self._session = None
