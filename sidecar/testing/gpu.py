"""The GPU component on the simulated backend, driven through a real scenario file: a harness
shared by the GPU integration tests (no GPU needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from sidecar.core.protocols import Clock
from sidecar.core.values import CheckResult, Severity
from sidecar.gpu.component import GpuComponent
from sidecar.gpu.config import GpuConfig
from sidecar.runtime.scenario import ScenarioFile
from sidecar.testing import RecordingSink, await_until

U0 = "GPU-sim-0"
U1 = "GPU-sim-1"


class Harness:
    def __init__(self, tmp: Path, config: GpuConfig, *, clock: Clock = time.monotonic) -> None:
        self.tmp = tmp
        self.clock = clock  # the component's monotonic clock (a test may drive it)
        self.path = tmp / "scenario.yaml"
        self.state_dir = tmp / "state"
        self.config = config
        self.sink = RecordingSink()
        self.registry = CollectorRegistry()
        self.scenario = ScenarioFile(self.path, poll_interval_s=0.005)
        self.component: GpuComponent | None = None

    def write(self, doc: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc), encoding="utf-8")
        tmp.replace(self.path)

    async def apply(self, doc: dict[str, Any]) -> None:
        """Write the scenario and wait until the backend applied it (the generation counts
        documents applied, after every listener ran)."""
        before = self.scenario.generation
        self.write(doc)
        await await_until(lambda: self.scenario.generation > before, what="scenario applied")

    async def poll(self) -> None:
        """Run the GPU poll once and submit its results, as the app's scheduler does (it saves
        the state file): the witness that a full sample of the current state was taken."""
        assert self.component is not None
        poll = next(c for c in self.component.checks() if c.name == "gpu")
        self.sink.submit(await poll.run())

    async def _start_component(self, boot_id: str) -> GpuComponent:
        self.component = GpuComponent(
            self.config,
            simulate=True,
            scenario=self.scenario,
            registry=self.registry,
            state_dir=self.state_dir,
            boot_id=boot_id,
            clock=self.clock,
        )
        await self.component.start(self.sink)
        return self.component

    async def start(self, boot_id: str = "boot-1") -> GpuComponent:
        await self.scenario.start()
        return await self._start_component(boot_id)

    async def restart(self, boot_id: str = "boot-1") -> GpuComponent:
        """A new component on the same state dir, with a fresh sink and registry."""
        assert self.component is not None
        await self.component.stop()
        self.sink = RecordingSink()
        self.registry = CollectorRegistry()
        return await self._start_component(boot_id)

    async def stop(self) -> None:
        if self.component is not None:
            await self.component.stop()
        await self.scenario.stop()

    async def until(self, name: str, pred: Callable[[CheckResult], bool], within: float = 3.0) -> CheckResult:
        deadline = time.monotonic() + within
        while True:
            r = self.sink.latest.get(name)
            if r is not None and pred(r):
                return r
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: condition not met; latest={r}")
            await asyncio.sleep(0.005)

    async def reason(self, name: str, reason: str, within: float = 3.0) -> CheckResult:
        return await self.until(name, lambda r: r.reason == reason, within)

    async def healthy(self, name: str, within: float = 3.0) -> CheckResult:
        return await self.until(name, lambda r: r.ok and r.reason in ("", "Unmonitored"), within)

    def metric(self, metric: str, /, **labels: str) -> float | None:
        return self.registry.get_sample_value(metric, labels)


def gating(r: CheckResult) -> bool:
    return not r.ok and r.severity >= Severity.CRITICAL and "readiness" in r.gates


def fast_config(**kw: Any) -> GpuConfig:
    base: dict[str, Any] = {
        "poll_interval_s": 0.05,
        "nvml_call_timeout_s": 0.3,
        "event_wait_timeout_s": 0.05,
        "thermal_sustain_s": 0.0,
    }
    base.update(kw)
    return GpuConfig(**base)


def gpu(index: int = 0, **kw: Any) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-sim-{index}", **kw}
