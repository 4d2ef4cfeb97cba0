"""A check that raised once: its CheckError condition is cleared when the check works again."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.core.values import CheckResult

from .conftest import NOT_SERVING, SERVING, AppThread, check, wait_until


class FlakyFile:
    """Named like the engine-file check: its results use another condition name."""

    name = "engine-file/prod"
    interval_s = 0.05
    timeout_s = 1.0

    def __init__(self) -> None:
        self.calls = 0
        self.fail_on = {1}

    async def run(self) -> Sequence[CheckResult]:
        self.calls += 1
        if self.calls in self.fail_on:
            raise OSError("volume hiccup")
        return [CheckResult.passed("engine/prod", gates=frozenset({"readiness", "engine/prod"}))]

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return []


def test_check_error_condition_clears_after_the_check_succeeds(app: AppThread) -> None:
    flaky = FlakyFile()

    async def add() -> None:
        app.app.scheduler.add([flaky])

    def conditions() -> dict[str, Any]:
        return {c.name: c for c in app.app.snapshot()[0]}

    def went_unhealthy() -> float:
        value = app.app.registry.get_sample_value(
            "trt_health_transitions_total",
            {"condition": "engine-file/prod", "to": "unhealthy", "reason": "CheckError"},
        )
        return value or 0.0

    app.call(add())
    # witness: the raised run was recorded (a CheckError condition that went unhealthy)
    wait_until(lambda: went_unhealthy() == 1, timeout=5)
    wait_until(lambda: flaky.calls >= 5, timeout=5)
    assert check(app.addr, "engine/prod") == SERVING
    assert "engine-file/prod" not in conditions(), conditions().get("engine-file/prod")
    assert check(app.addr, "readiness") == SERVING
    app.call(app.app.scheduler.remove(["engine-file/prod"]))


def test_a_raised_check_gates_the_services_its_results_gate(app: AppThread) -> None:
    """While a check cannot run, the services its results gate (engine/prod) read
    NOT_SERVING with readiness, never SERVING on stale results; liveness is never touched."""
    flaky = FlakyFile()
    flaky.fail_on = set(range(3, 10_000))  # works twice, then raises on every run

    async def add() -> None:
        app.app.scheduler.add([flaky])

    app.call(add())
    wait_until(lambda: flaky.calls >= 4, timeout=5)  # witness: it raised after good runs
    wait_until(lambda: check(app.addr, "engine/prod") == NOT_SERVING, timeout=5)
    assert check(app.addr, "readiness") == NOT_SERVING
    assert check(app.addr, "liveness") == SERVING
    app.call(app.app.scheduler.remove(["engine-file/prod"]))
