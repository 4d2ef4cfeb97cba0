"""The NVML session: the backend behind the call watchdog (:class:`sidecar.gpu.caller.NvmlCaller`),
opened once and re-opened after NVML became unavailable. Every failure becomes the ``nvml``
condition (fail closed); the ``nvml_up`` gauge follows it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sidecar.core.protocols import Clock
from sidecar.core.values import CheckResult
from sidecar.gpu.backend import (
    EventRegistration,
    GpuBackend,
    GpuInfo,
    GpuSample,
    NvmlError,
    NvmlHungError,
    NvmlUnavailableError,
    Reading,
    SystemInfo,
)
from sidecar.gpu.caller import NvmlCaller
from sidecar.gpu.metrics import GpuMetrics
from sidecar.gpu.process_conditions import nvml_failed, nvml_ok


class NvmlSession:
    """Calls into the backend, each bounded by ``timeout_s`` (see module doc)."""

    def __init__(
        self,
        backend: GpuBackend,
        metrics: GpuMetrics,
        *,
        timeout_s: float,
        clock: Clock,
        wall: Clock,
        on_unstuck: Callable[[], None],
        log: logging.Logger,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.system: SystemInfo | None = None
        self._timeout_s = timeout_s
        self._wall = wall
        self._log = log
        self._opened = False
        self._caller = NvmlCaller(
            observe=metrics.observe_call,
            on_hung=lambda op: metrics.nvml_hung.labels(op=op).inc(),
            on_unstuck=on_unstuck,
            clock=clock,
        )

    async def call(self, fn: Callable[[], Any], op: str) -> Any:
        return await self._caller.call(fn, op=op, timeout_s=self._timeout_s)

    async def inventory(self) -> tuple[float, list[GpuInfo]] | CheckResult:
        """Open NVML if needed and enumerate: (wall time of the enumeration, the GPUs), or the
        failing ``nvml`` result."""
        backend = self.backend
        if not self._opened:
            try:
                self.system = await self.call(backend.open, "open")
            except NvmlHungError as exc:
                self.metrics.nvml_up.set(0)
                return nvml_failed("NvmlHung", exc.text, hung=True)
            except NvmlError as exc:
                self.metrics.nvml_up.set(0)
                return self.error_result(exc)
            self._opened = True
            assert self.system is not None
            self._log.info(
                "NVML opened", extra={"backend": backend.kind, "driver": self.system.driver_version}
            )
        enumerated = self._wall()
        try:
            infos: list[GpuInfo] = await self.call(backend.devices, "devices")
        except NvmlHungError as exc:
            self.metrics.nvml_up.set(0)
            return nvml_failed("NvmlHung", exc.text, hung=True)
        except NvmlError as exc:
            if isinstance(exc, NvmlUnavailableError):
                self._opened = False
            self.metrics.nvml_up.set(0)
            return self.error_result(exc)
        return enumerated, infos

    async def sample(self, uuid: str) -> GpuSample:
        """One GPU's signals; raises the backend's :class:`NvmlError` subclasses."""
        sample: GpuSample = await self.call(lambda: self.backend.sample(uuid), "sample")
        return sample

    async def validate_inforom(self, uuid: str) -> Reading[bool]:
        reading: Reading[bool] = await self.call(lambda: self.backend.validate_inforom(uuid), "inforom")
        return reading

    async def register_events(self, uuids: list[str]) -> tuple[list[EventRegistration], bool]:
        """Register events on each GPU: (registrations, True), or on failure one registration
        per GPU carrying the error and False (polling only)."""
        try:
            regs: list[EventRegistration] = await self.call(
                lambda: self.backend.register_events(uuids), "register_events"
            )
        except NvmlError as exc:
            self._log.warning(
                "NVML event registration failed; polling only",
                extra={"reason": exc.reason, "error": exc.text},
            )
            return [EventRegistration(u, 0, 0, exc.text) for u in uuids], False
        return regs, True

    def unavailable(self, exc: NvmlUnavailableError) -> CheckResult:
        """A call found NVML unusable: re-open at the next poll."""
        self._opened = False
        self.metrics.nvml_up.set(0)
        return self.error_result(exc)

    def status(self, hung: NvmlHungError | None) -> CheckResult:
        """The ``nvml`` condition after a poll: hung when a call hung, else reachable."""
        if hung is not None:
            self.metrics.nvml_up.set(0)
            return nvml_failed("NvmlHung", hung.text, hung=True, uuid=hung.uuid or "")
        self.metrics.nvml_up.set(1)
        driver = self.system.driver_version if self.system else ""
        return nvml_ok(driver, self.backend.kind)

    @staticmethod
    def error_result(exc: NvmlError) -> CheckResult:
        if isinstance(exc, NvmlUnavailableError):
            return nvml_failed(exc.reason, f"NVML unavailable: {exc.text}")
        return nvml_failed(exc.reason, f"NVML error: {exc.text}", hung=True)

    def close(self) -> None:
        self._caller.close()
