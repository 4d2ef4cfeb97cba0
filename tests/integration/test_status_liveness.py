"""`status` against a real server; liveness follows the sidecar's own loops only."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from sidecar.core.values import CheckResult, Severity
from sidecar.testing import await_until

from .conftest import NOT_SERVING, REPO, SERVING, AppThread, check, wait_until


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "status", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )


def test_status_table_and_json(app: AppThread) -> None:
    """status prints every service and condition with its reason; --json is machine-readable."""
    app.submit(
        CheckResult.failed(
            "gpu/GPU-9/remap",
            "RemapFailure",
            "row remapping failed",
            severity=Severity.FATAL,
            gates=frozenset({"readiness", "gpu"}),
        )
    )
    res = run_status("--addr", app.addr)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(
        line.startswith("readiness") and "NOT_SERVING" in line and "RemapFailure" in line for line in lines
    )
    assert any(line.startswith("gpu/GPU-9/remap") and "GATING" in line and "fatal" in line for line in lines)
    res = run_status("--addr", app.addr, "--json")
    doc = json.loads(res.stdout)
    cond = doc["checks"]["gpu/GPU-9/remap"]  # the /healthz document shape
    assert cond["reason"] == "RemapFailure" and cond["gating"] is True


def test_status_connection_failure_exit_2() -> None:
    """status exits 2 when nothing listens."""
    res = run_status("--addr", "127.0.0.1:1", "--timeout", "0.3")
    assert res.returncode == 2
    assert "failed to connect" in res.stderr


class OneShot:
    """A check whose loop we can kill to simulate a scheduler bug."""

    name = "oneshot"
    interval_s = 0.05
    timeout_s = 0.1

    async def run(self) -> Sequence[CheckResult]:
        return [CheckResult.passed(self.name)]

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return []


def test_liveness_fails_when_a_check_loop_dies(make_app: Any) -> None:
    """A dead check loop turns liveness NOT_SERVING (a restart fixes a wedged sidecar);
    readiness is unaffected by that alone."""
    from sidecar.config import LivenessConfig

    from .conftest import core_config

    app: AppThread = make_app(
        core_config(liveness=LivenessConfig(heartbeat_interval_s=0.05, max_loop_lag_s=1.0))
    )

    async def add_and_kill() -> None:
        app.app.scheduler.add([OneShot()])
        loop = app.app.scheduler.loops["oneshot"]
        await await_until(lambda: loop.runs >= 2)  # the loop ran (and beat) before it dies
        assert loop.task is not None
        loop.task.cancel()

    assert check(app.addr, "liveness") == SERVING
    app.call(add_and_kill())
    wait_until(lambda: check(app.addr, "liveness") == NOT_SERVING, timeout=3)
    assert check(app.addr, "startup") == SERVING
    _conditions, verdicts = app.app.snapshot()
    assert verdicts["liveness"].reasons == ("SchedulerStalled: oneshot",)
