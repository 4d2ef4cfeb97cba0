"""The runner protocol: one way to run the canary, chosen by config (``runner:``).

A runner is created and used only inside the worker process. ``load`` acquires everything
(context, engine, buffers) once; ``infer`` runs one synchronous inference on the fixed golden
input and returns host copies of the outputs; the worker keeps the runner between canaries.
Errors are raised as :class:`RunnerError` with a machine-readable reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from sidecar.core.errors import SidecarError
from sidecar.engine.manifest import EngineManifest


class RunnerError(SidecarError):
    """A runner failure with a reason (``CudaError``, ``EngineDeserializeFailed`` ...).

    ``sticky`` marks a poisoned CUDA context: the process must be replaced.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        cuda_error: str | None = None,
        sticky: bool = False,
        labels: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.cuda_error = cuda_error
        self.sticky = sticky
        self.labels = dict(labels or {})


class RunnerUnavailable(RunnerError):
    """The runner's library or device is absent (``auto`` then tries the next runner)."""


@dataclass(slots=True)
class LoadInfo:
    """What a runner reports after ``load``."""

    detail: str  # human summary: library version, devices, engine
    uses_gpu: bool = False
    labels: dict[str, str] = field(default_factory=dict)


class Runner(Protocol):
    name: str

    def load(self) -> LoadInfo:
        """Acquire context, engine and buffers. Raises :class:`RunnerError`."""
        ...

    def infer(self, *, gpu_fault: str = "none") -> dict[str, np.ndarray]:
        """Run once on the golden input; outputs by name (``name@gpu`` per device for
        multi-GPU runners). ``gpu_fault`` is a test-only real fault (kernel runner only)."""
        ...

    def close(self) -> None: ...


def load_golden_inputs(manifest: EngineManifest) -> dict[str, np.ndarray]:
    """The golden input arrays named in a manifest, checked against its input specs."""
    out: dict[str, np.ndarray] = {}
    paths = manifest.golden_input_paths()
    for spec in manifest.inputs:
        path = paths.get(spec.name)
        if path is None:
            raise RunnerError(
                "CanaryConfigInvalid", f"manifest {manifest.name}: no golden input for {spec.name}"
            )
        arr = _load_npy(path)
        if spec.shape and tuple(arr.shape) != spec.shape:
            raise RunnerError(
                "CanaryConfigInvalid",
                f"golden input {path.name} has shape {arr.shape}, manifest says {spec.shape}",
            )
        out[spec.name] = np.ascontiguousarray(arr.astype(spec.dtype, copy=False))
    return out


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise RunnerError("GoldenFileUnreadable", f"{path}: {exc}") from exc
