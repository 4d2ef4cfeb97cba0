"""Make-before-break reloads, driven step by step: the replacement components are fakes whose
check runs the test scripts, so each stage of the swap can be held and looked at.

- a staged check that raised once and then recovers retires its CheckError (it is neither
  stuck in the held results nor dropped from the live component's conditions);
- a staged run never settles the live component's "Starting" gate;
- a section swaps as soon as its own results settled (a FATAL result never waits for another
  section's slow first run);
- a reload that is rejected applies nothing (policy thresholds stay the old ones);
- a reload cancelled in the middle of the swap leaves no replacement running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

import sidecar.runtime.reload as appmod
from sidecar.app import SidecarApp
from sidecar.config import SidecarConfig
from sidecar.core.policy import PolicyConfig, Thresholds
from sidecar.core.values import CheckResult, Severity
from sidecar.testing import await_until

from .conftest import NOT_SERVING, SERVING, check, core_config

Step = Callable[[str], Awaitable[Sequence[CheckResult]]]


async def ok(name: str) -> Sequence[CheckResult]:
    return [CheckResult.passed(name, reason="Fine")]


async def boom(name: str) -> Sequence[CheckResult]:
    raise RuntimeError("injected check bug")


def sub_ok(suffix: str = "sub") -> Step:
    """A pass under another condition name than the check's own."""

    async def step(name: str) -> Sequence[CheckResult]:
        return [CheckResult.passed(f"{name}/{suffix}", reason="Fine")]

    return step


def fatal(name: str) -> Step:
    async def step(_name: str) -> Sequence[CheckResult]:
        return [CheckResult.failed(name, "XidFatal79", "fallen off the bus", severity=Severity.FATAL)]

    return step


def gated(gate: asyncio.Event, then: Step = ok) -> Step:
    async def step(name: str) -> Sequence[CheckResult]:
        await gate.wait()
        return await then(name)

    return step


class Scripted:
    """A check whose n-th run takes the n-th step (the last one repeats)."""

    def __init__(self, name: str, *steps: Step, timeout_s: float = 1.0, interval_s: float = 0.05) -> None:
        self.name = name
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.steps = steps
        self.calls = 0

    async def run(self) -> Sequence[CheckResult]:
        step = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        return await step(self.name)

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [CheckResult.unknown(self.name, "Timeout", f"no answer in {elapsed_s:.1f}s")]


class Fake:
    """A component: its checks, and a stop the test can hold."""

    def __init__(self, name: str, *checks: Scripted, stop_gate: asyncio.Event | None = None) -> None:
        self.name = name
        self._checks = list(checks)
        self.stop_gate = stop_gate
        self.started = False
        self.stopping = False
        self.stopped = False

    def checks(self) -> Sequence[Scripted]:
        return self._checks

    async def start(self, _sink: Any) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopping = True
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        self.stopped = True


class Harness:
    """A SidecarApp (real servers, real scheduler and policy) whose sections build fakes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._builds: dict[tuple[str, str], Fake] = {}
        self._versions = itertools.count(1)
        self.app: SidecarApp | None = None
        self.tasks: list[asyncio.Task[bool]] = []

    def _components(self, fakes: dict[str, Fake]) -> dict[str, str]:
        version = f"v{next(self._versions)}"
        for section, fake in fakes.items():
            self._builds[(section, version)] = fake
        return dict.fromkeys(fakes, version)

    def _build(self, section: str, cfg: SidecarConfig, _registry: Any) -> Fake | None:
        version = cfg.components.get(section)
        return self._builds.get((section, version)) if version is not None else None

    async def start(self, fakes: dict[str, Fake], **kw: Any) -> SidecarApp:
        app = SidecarApp(core_config(components=self._components(fakes), **kw))
        app.build_section = self._build  # type: ignore[method-assign,assignment]
        self.app = app
        await app.start()
        return app

    def reload(self, fakes: dict[str, Fake], **kw: Any) -> asyncio.Task[bool]:
        """Start a reload to a config whose sections in ``fakes`` build those (the other
        sections are unchanged)."""
        assert self.app is not None
        components = {**self.app.config.components, **self._components(fakes)}
        new = dataclasses.replace(self.app.config, components=components, **kw)
        self._monkeypatch.setattr(appmod, "load_config", lambda **_kw: new)
        task = asyncio.ensure_future(self.app.reload_config())
        self.tasks.append(task)
        return task

    async def readiness(self) -> int:
        assert self.app is not None
        return await asyncio.to_thread(check, f"127.0.0.1:{self.app.grpc_port}", "readiness")

    def serving(self) -> bool:
        assert self.app is not None
        return bool(self.app.snapshot()[1]["readiness"].serving)

    def conditions(self) -> dict[str, Any]:
        assert self.app is not None
        return {c.name: c for c in self.app.snapshot()[0]}

    def runs(self, check_name: str) -> float:
        assert self.app is not None
        total = 0.0
        for outcome in ("ok", "fail", "error", "timeout", "late"):
            value = self.app.registry.get_sample_value(
                "trt_health_check_runs_total", {"check": check_name, "outcome": outcome}
            )
            total += value or 0.0
        return total


@pytest.fixture
async def harness(monkeypatch: pytest.MonkeyPatch) -> Any:
    h = Harness(monkeypatch)
    yield h
    for task in h.tasks:  # a test that failed may leave a reload waiting
        task.cancel()
    await asyncio.gather(*h.tasks, return_exceptions=True)
    if h.app is not None:
        await h.app.stop()


async def test_a_staged_check_that_raised_once_retires_its_error(harness: Harness) -> None:
    """Finding 3: the replacement's check raises on its first run (CheckError under the check's
    own name), then works (results under other names). The error is retired from what the
    replacement holds: the swap happens as soon as the replacement settled, and readiness is
    SERVING afterwards (it used to wait for the deadline, then go NOT_SERVING for good)."""
    await harness.start({"workload": Fake("old", Scripted("w", sub_ok(), timeout_s=30.0))})
    await await_until(harness.serving)
    assert await harness.readiness() == SERVING
    new = Fake("new", Scripted("w", boom, sub_ok(), timeout_s=30.0))
    task = harness.reload({"workload": new})
    # the grace is 31 s: the reload is done long before, once the staged check recovered
    assert await asyncio.wait_for(task, 10.0)
    assert new.checks()[0].calls >= 2  # witness: the staged check raised, then ran again
    assert "w" not in harness.conditions()
    assert await harness.readiness() == SERVING


async def test_a_staged_recovery_does_not_drop_the_live_components_error(harness: Harness) -> None:
    """Finding 3, reverse: the live component's check keeps raising (its CheckError holds
    readiness NOT_SERVING); the replacement's check raises once, then works. Its recovery is
    not evidence about the live component: readiness stays NOT_SERVING until the swap."""
    hold = asyncio.Event()
    # the live check raised once; its next run is far away
    await harness.start({"workload": Fake("old", Scripted("w", boom, timeout_s=30.0, interval_s=300.0))})
    await await_until(lambda: "w" in harness.conditions() and harness.runs("w") >= 1)
    assert await harness.readiness() == NOT_SERVING
    # a second check keeps the replacement unsettled while we look
    new = Fake(
        "new",
        Scripted("w", boom, sub_ok(), timeout_s=30.0),
        Scripted("w2", gated(hold), timeout_s=30.0),
    )
    task = harness.reload({"workload": new})
    # witness: the staged check raised, then recovered (its third run started after that)
    await await_until(lambda: new.checks()[0].calls >= 3)
    assert await harness.readiness() == NOT_SERVING
    assert harness.conditions()["w"].last.reason == "CheckError"
    hold.set()
    assert await asyncio.wait_for(task, 10.0)
    assert await harness.readiness() == SERVING


async def test_a_staged_run_does_not_settle_the_live_starting_gate(harness: Harness) -> None:
    """Finding 4: the live check has not produced its first result (readiness NOT_SERVING,
    "Starting"). The replacement's run of the same check is not that result: readiness stays
    NOT_SERVING while the replacement is staged, and follows the replacement after the swap.
    (Another section keeps publishing meanwhile.)"""
    live_gate, hold = asyncio.Event(), asyncio.Event()
    await harness.start(
        {
            "workload": Fake("old", Scripted("w", gated(live_gate), timeout_s=30.0)),
            "trends": Fake("other", Scripted("t", ok)),
        }
    )
    await await_until(lambda: "t" in harness.conditions())
    assert await harness.readiness() == NOT_SERVING
    new = Fake(
        "new",
        Scripted("w", ok, timeout_s=30.0),
        Scripted("w2", gated(hold), timeout_s=30.0),
    )
    task = harness.reload({"workload": new})
    await await_until(lambda: harness.runs("w") >= 1)  # witness: the staged "w" ran
    runs_t = harness.runs("t")
    await await_until(lambda: harness.runs("t") >= runs_t + 2)  # ... and "t" published since
    assert await harness.readiness() == NOT_SERVING
    reasons = harness.app.snapshot()[1]["readiness"].reasons if harness.app else ()
    assert "w: Starting" in reasons
    hold.set()
    assert await asyncio.wait_for(task, 10.0)
    assert await harness.readiness() == SERVING
    live_gate.set()


async def test_a_staged_fatal_result_swaps_its_section_at_once(harness: Harness) -> None:
    """Finding 6: two sections reload; the first one's replacement is slow (its first run
    waits), the second one's finds a FATAL fault. That section swaps at once: readiness goes
    NOT_SERVING with the fault while the other replacement is still staged."""
    slow = asyncio.Event()
    await harness.start(
        {
            "workload": Fake("old-w", Scripted("w", ok, timeout_s=30.0)),
            "trends": Fake("old-t", Scripted("t", ok, timeout_s=30.0)),
        }
    )
    await await_until(harness.serving)
    assert await harness.readiness() == SERVING
    new_w = Fake("new-w", Scripted("w", gated(slow), timeout_s=300.0))
    new_t = Fake("new-t", Scripted("t", fatal("t"), timeout_s=300.0))
    task = harness.reload({"workload": new_w, "trends": new_t})
    await await_until(lambda: harness.conditions()["t"].last.reason == "XidFatal79")
    assert not task.done() and new_w.checks()[0].calls == 1  # the slow one is still staged
    assert await harness.readiness() == NOT_SERVING
    slow.set()
    assert await asyncio.wait_for(task, 10.0)
    assert await harness.readiness() == NOT_SERVING


async def test_a_rejected_reload_keeps_the_old_thresholds(harness: Harness) -> None:
    """Finding 13: a reload that lowers failure_threshold to 1 and whose component cannot be
    started is rejected; one failure is still below the old threshold (3)."""
    strict = PolicyConfig(defaults=Thresholds(failure_threshold=3))
    app = await harness.start({"workload": Fake("old", Scripted("w", ok, timeout_s=30.0))}, policy=strict)
    await await_until(harness.serving)
    new = Fake("new", Scripted("w", ok, timeout_s=30.0))

    async def cannot_start(_sink: Any) -> None:
        raise RuntimeError("cannot start")

    new.start = cannot_start  # type: ignore[method-assign]
    lenient = PolicyConfig(defaults=Thresholds(failure_threshold=1))
    assert not await asyncio.wait_for(harness.reload({"workload": new}, policy=lenient), 10.0)
    assert app.metrics.config_reloads.labels("rejected")._value.get() == 1
    app.submit([CheckResult.passed("other")])
    await await_until(lambda: harness.conditions().get("other") is not None)
    app.submit([CheckResult.failed("other", "Broken", "one failure")])
    assert harness.conditions()["other"].consecutive_failures == 1
    assert await harness.readiness() == SERVING


async def test_a_reload_cancelled_during_the_swap_stops_every_replacement(harness: Harness) -> None:
    """Finding 14: the reload is cancelled (shutdown) while the first section's old component
    is stopping; the second section's replacement, still staged, is stopped too."""
    gate = asyncio.Event()
    app = await harness.start(
        {
            "workload": Fake("old-w", Scripted("w", ok, timeout_s=30.0), stop_gate=gate),
            "trends": Fake("old-t", Scripted("t", ok, timeout_s=30.0)),
        }
    )
    await await_until(harness.serving)
    old_w = app.component("workload")
    new_w = Fake("new-w", Scripted("w", ok, timeout_s=30.0))
    new_t = Fake("new-t", Scripted("t", ok, timeout_s=30.0))
    task = harness.reload({"workload": new_w, "trends": new_t})
    await await_until(lambda: old_w.stopping)  # witness: the swap is under way
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    gate.set()
    await app.stop()
    assert new_w.started and new_t.started
    assert new_w.stopped and new_t.stopped
