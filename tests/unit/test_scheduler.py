"""Scheduler: timeouts, single-flight, triggers, errors and stall detection."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from sidecar.core.values import CheckResult
from sidecar.runtime.scheduler import Scheduler
from sidecar.testing import await_until


class FakeCheck:
    def __init__(self, name: str = "c", interval_s: float = 0.05, timeout_s: float = 0.1) -> None:
        self.name = name
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.calls = 0
        self.block: asyncio.Event | None = None
        self.raise_exc: Exception | None = None
        self.running = 0
        self.max_running = 0

    async def run(self) -> Sequence[CheckResult]:
        self.calls += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if self.raise_exc:
                raise self.raise_exc
            if self.block is not None:
                await self.block.wait()
            return [CheckResult.passed(self.name)]
        finally:
            self.running -= 1

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [CheckResult.unknown(self.name, "NvmlHung", f"stuck for {elapsed_s:.2f}s")]


async def test_timeout_is_a_finding_and_single_flight_holds() -> None:
    """A stuck run is reported via on_timeout and never doubled; its late result is recorded."""
    got: list[CheckResult] = []
    check = FakeCheck(timeout_s=0.05, interval_s=0.02)
    check.block = asyncio.Event()
    sched = Scheduler(got.extend, jitter=0.0)
    sched.add([check])
    # witness: the loop ticked again while the run was stuck (a timeout, then >= 2 in-flight
    # reports), and still never started a second run
    await await_until(lambda: len(got) >= 3)
    assert check.calls == 1 and check.max_running == 1
    reasons = {r.reason for r in got}
    assert reasons == {"NvmlHung"}
    check.block.set()
    await await_until(lambda: any(r.ok for r in got))
    assert check.max_running == 1
    await sched.stop()


async def test_trigger_runs_at_once() -> None:
    """trigger() runs a check before its interval elapses."""
    got: list[CheckResult] = []
    check = FakeCheck(interval_s=60)
    sched = Scheduler(got.extend, jitter=0.0)
    sched.add([check])
    await await_until(lambda: len(got) == 1)
    assert check.calls == 1
    sched.trigger("c")
    # the interval is 60 s: a second run within the hang guard can only come from the trigger
    await await_until(lambda: len(got) == 2)
    assert check.calls == 2
    await sched.stop()


async def test_exception_becomes_unknown_result_and_loop_survives() -> None:
    """A check that raises reports CheckError and keeps being scheduled."""
    got: list[CheckResult] = []
    check = FakeCheck(interval_s=0.02)
    check.raise_exc = RuntimeError("boom")
    sched = Scheduler(got.extend, jitter=0.0)
    sched.add([check])
    await await_until(lambda: len(got) >= 3)
    assert check.calls >= 3
    assert got and all(r.reason == "CheckError" and "boom" in r.message for r in got)
    assert sched.stalled(asyncio.get_running_loop().time(), lambda c: 10.0) == []
    await sched.stop()


async def test_thread_stuck_check_does_not_stall_loop() -> None:
    """A check stuck in a thread (driver call) times out; the loop and other checks go on."""
    got: list[CheckResult] = []
    release = threading.Event()

    class ThreadCheck(FakeCheck):
        async def run(self) -> Sequence[CheckResult]:
            self.calls += 1
            await asyncio.to_thread(release.wait, 5)
            return [CheckResult.passed(self.name)]

    stuck = ThreadCheck("stuck", interval_s=0.02, timeout_s=0.05)
    other = FakeCheck("other", interval_s=0.02)
    sched = Scheduler(got.extend, jitter=0.0)
    sched.add([stuck, other])
    # witness: the stuck check timed out and was reported in flight again, and the other check
    # kept running meanwhile
    await await_until(lambda: sum(1 for r in got if r.name == "stuck") >= 2 and other.calls >= 5)
    assert stuck.calls == 1
    assert other.calls >= 5
    release.set()
    await sched.stop()
