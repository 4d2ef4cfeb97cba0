"""The GPU layer's polled checks: the poll (every GPU sampled, :data:`POLL_CHECK`) and the rare
InfoROM validation. Each delegates to the component that owns the backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sidecar.core.values import CheckResult
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.process_conditions import nvml_failed


class GpuPoller(Protocol):
    """What the checks need of the GPU component."""

    config: GpuConfig

    async def refresh(self, *, submit: bool) -> list[CheckResult]: ...

    async def check_inforom(self) -> list[CheckResult]: ...


class GpuPollCheck:
    """Samples every GPU through the backend (off the event loop, with the NVML watchdog)."""

    def __init__(self, component: GpuPoller) -> None:
        self._component = component
        cfg = component.config
        self.name = "gpu"
        self.interval_s = cfg.poll_interval_s
        # worst case: one call waits for an event-driven refresh, then one call hangs
        self.timeout_s = 2 * cfg.nvml_call_timeout_s + 1.0

    async def run(self) -> Sequence[CheckResult]:
        return await self._component.refresh(submit=False)

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [nvml_failed("NvmlHung", f"GPU poll still running after {elapsed_s:.1f}s", hung=True)]


class InforomCheck:
    """Validates each GPU's InfoROM (slow: ~70 ms per GPU), rarely."""

    def __init__(self, component: GpuPoller) -> None:
        self._component = component
        cfg = component.config
        self.name = "gpu/inforom"
        self.interval_s = cfg.inforom_interval_s
        self.timeout_s = 2 * cfg.nvml_call_timeout_s + 1.0

    async def run(self) -> Sequence[CheckResult]:
        return await self._component.check_inforom()

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return []
