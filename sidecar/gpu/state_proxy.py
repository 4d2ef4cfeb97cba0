"""The GpuStateView the other components hold across reloads of the GPU component."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.core.protocols import GpuStateView


class GpuStateProxy:
    """The GpuStateView other components hold: forwards to the current GPU component, so a
    reload that replaces it does not leave them asking a stopped one. Without a GPU
    component it answers "no fault, not busy, nothing known"."""

    def __init__(self) -> None:
        self.target: GpuStateView | None = None
        self._generation_base = 0

    def swap(self, target: GpuStateView | None) -> None:
        # keep reset_generation() unchanged across the swap: a new component is not a reset
        before = self.reset_generation()
        self.target = target
        self._generation_base = before - (target.reset_generation() if target is not None else 0)

    def exclusive_process(self) -> bool:
        return bool(self.target is not None and self.target.exclusive_process())

    def busy(self) -> bool:
        return bool(self.target is not None and self.target.busy())

    def reset_generation(self) -> int:
        inner = int(self.target.reset_generation()) if self.target is not None else 0
        return self._generation_base + inner

    def gpu_fault(self) -> bool:
        return bool(self.target is not None and self.target.gpu_fault())

    # optional parts of a GPU component (a test's stand-in may lack them)
    def compute_capability(self) -> str | None:
        fn = getattr(self.target, "compute_capability", None)
        return fn() if fn is not None else None

    def free_memory_mib(self) -> float | None:
        fn = getattr(self.target, "free_memory_mib", None)
        return fn() if fn is not None else None

    def identity(self) -> Mapping[str, str]:
        fn = getattr(self.target, "identity", None)
        return fn() if fn is not None else {}

    def latest_samples(self) -> Mapping[str, tuple[float, Any]]:
        fn = getattr(self.target, "latest_samples", None)
        return fn() if fn is not None else {}
