"""Liveness sees a blocked event loop (judged from outside the loop), and recovers."""

from __future__ import annotations

import threading
from typing import Any

from sidecar.config import LivenessConfig

from .conftest import NOT_SERVING, SERVING, AppThread, check, core_config, wait_until


def test_liveness_not_serving_while_the_loop_is_blocked(make_app: Any) -> None:
    app: AppThread = make_app(
        core_config(liveness=LivenessConfig(heartbeat_interval_s=0.05, max_loop_lag_s=0.3))
    )
    wait_until(lambda: check(app.addr, "liveness") == SERVING, timeout=5)
    release = threading.Event()
    entered = threading.Event()

    def block() -> None:  # what a slow parse or file read on the loop does
        entered.set()
        release.wait(30)

    app.loop.call_soon_threadsafe(block)
    try:
        wait_until(entered.is_set, timeout=5)  # witness: the loop is blocked now
        wait_until(lambda: check(app.addr, "liveness") == NOT_SERVING, timeout=5)
        _conditions, verdicts = app.app.snapshot()
        assert verdicts["liveness"].reasons[0].startswith("EventLoopBlocked")
        assert app.app.http_snapshot().live is False
        assert check(app.addr, "startup") == SERVING  # only liveness judges the loop
    finally:
        release.set()
    wait_until(lambda: check(app.addr, "liveness") == SERVING, timeout=5)
    assert app.app.http_snapshot().live is True
