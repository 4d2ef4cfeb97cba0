"""While the watchdog holds liveness NOT_SERVING (the loop missed its heartbeat), every
publisher says so, and what the loop publishes meanwhile is served as it is, with liveness
still NOT_SERVING: the watchdog never rewrites the loop's snapshots with an older copy.
Review finding 8."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import grpc

from sidecar.config import LivenessConfig
from sidecar.core.values import CheckResult, Severity
from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc

from .conftest import NOT_SERVING, SERVING, AppThread, check, core_config, wait_until

GATES = frozenset({"readiness", "gpu", "gpu/GPU-1"})


def _get(app: AppThread, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(app.http_base + path, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _healthz_liveness(app: AppThread) -> dict[str, Any]:
    _code, body = _get(app, "/healthz")
    entry: dict[str, Any] = json.loads(body)["services"]["liveness"]
    return entry


def _diag_liveness(app: AppThread) -> Any:
    with grpc.insecure_channel(app.addr) as ch:
        resp = diagnostics_pb2_grpc.DiagnosticsStub(ch).GetConditions(
            diagnostics_pb2.ConditionsRequest(), timeout=5
        )
    return next(s for s in resp.services if s.name == "liveness")


def test_a_publish_while_blocked_is_served_fresh_with_liveness_still_not_serving(
    make_app: Any,
) -> None:
    """Order: ready, the loop blocks, the watchdog trips, the (still heartbeat-less) loop
    publishes a fresher ready=False, then the heartbeat comes back."""
    app: AppThread = make_app(
        core_config(liveness=LivenessConfig(heartbeat_interval_s=0.05, max_loop_lag_s=0.3))
    )
    app.submit(CheckResult.passed("gpu/GPU-1/ecc", gates=GATES))
    wait_until(lambda: _get(app, "/readyz")[0] == 200 and _get(app, "/livez")[0] == 200, timeout=5)
    assert _healthz_liveness(app)["status"] == "SERVING"
    tripped = threading.Event()
    published = threading.Event()
    release = threading.Event()

    def block() -> None:  # a slow parse on the loop that, in the middle, records a result
        tripped.wait(30)
        app.app.submit(
            [
                CheckResult.failed(
                    "gpu/GPU-1/ecc", "EccUncorrectable", "ecc", severity=Severity.FATAL, gates=GATES
                )
            ]
        )
        published.set()
        release.wait(30)

    app.loop.call_soon_threadsafe(block)
    try:
        # the watchdog trips: every publisher says liveness NOT_SERVING, the body included
        wait_until(lambda: check(app.addr, "liveness") == NOT_SERVING, timeout=5)
        assert _get(app, "/livez")[0] == 503
        body = _healthz_liveness(app)
        assert body["status"] == "NOT_SERVING"
        assert body["reasons"][0].startswith("EventLoopBlocked")
        assert _get(app, "/readyz")[0] == 200  # nothing else changed yet
        tripped.set()
        wait_until(published.is_set, timeout=5)  # witness: the loop published ready=False
        # the fresher verdict is served; the watchdog's liveness verdict still holds
        assert _get(app, "/readyz")[0] == 503
        assert check(app.addr, "readiness") == NOT_SERVING
        assert _get(app, "/livez")[0] == 503
        assert check(app.addr, "liveness") == NOT_SERVING
        assert _healthz_liveness(app)["status"] == "NOT_SERVING"
        diag = _diag_liveness(app)
        assert not diag.serving and diag.reasons[0].startswith("EventLoopBlocked")
    finally:
        tripped.set()
        release.set()
    # the heartbeat is back: liveness SERVING again, and the fresher ready=False stays
    wait_until(lambda: check(app.addr, "liveness") == SERVING, timeout=5)
    wait_until(lambda: _get(app, "/livez")[0] == 200, timeout=5)
    assert _healthz_liveness(app)["status"] == "SERVING"
    assert _diag_liveness(app).serving
    assert _get(app, "/readyz")[0] == 503
    assert check(app.addr, "readiness") == NOT_SERVING
    code, body_bytes = _get(app, "/healthz")
    assert code == 503 and json.loads(body_bytes)["status"] == "NOT_SERVING"
