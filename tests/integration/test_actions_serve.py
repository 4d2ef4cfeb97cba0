"""The actions component inside a real ``serve --simulate`` process: a bad new engine version
on the volume is rolled back on a real MLServer, and the action is a log line, a metric, a
Kubernetes Event (a fake API server) and a Diagnostics entry carrying the versions and the calls.
Without MLServer (``TRT_HEALTH_TEST_MLSERVER``) it skips and says why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc
from sidecar.testing import start_sidecar, wait_until
from sidecar.testing.engine import plan_bytes, write_engine
from sidecar.testing.kube import FakeApiServer
from sidecar.testing.mlserver import MLServer, index, infer_version, mlserver_exe, running_mlserver


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    if mlserver_exe() is None:
        pytest.skip("MLServer not available: set TRT_HEALTH_TEST_MLSERVER")
    with running_mlserver(tmp_path_factory.mktemp("mlserver-serve"), {"prod": ["1", "2"]}) as server:
        yield server


def conditions(addr: str) -> dict[str, Any]:
    with grpc.insecure_channel(addr) as ch:
        resp = diagnostics_pb2_grpc.DiagnosticsStub(ch).GetConditions(
            diagnostics_pb2.ConditionsRequest(), timeout=2
        )
    return {c.name: c for c in resp.conditions}


def test_rollback_in_serve_is_logged_counted_evented_and_diagnosed(
    mlserver: MLServer, tmp_path: Path
) -> None:
    api = FakeApiServer()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    engine_dir = tmp_path / "engines"
    engine_dir.mkdir()
    manifest = write_engine(engine_dir, plan_bytes(1), name="prod", version="1")
    cfg = {
        "canary": {"enabled": False},
        "engines": {
            "list": [{"name": "prod", "manifest": str(manifest)}],
            "tensorrt_version": "10.13.0.35",
            "stable_window": "50ms",
            "hash_min_interval": "0s",
            "check_interval": "1s",
        },
        "actions": {
            "enabled": True,
            "url": mlserver.url,
            "repository_dir": str(mlserver.root / "prod"),
            "interval": "0.2s",
            "engines": [{"engine": "prod", "rollback": True}],
        },
        "events": {
            "enabled": True,
            "api_server": api.url,
            "token_file": str(token),
            "ca_file": str(tmp_path / "no-ca.crt"),
            "namespace_file": str(tmp_path / "no-namespace"),
            "namespace": "inference",
            "pod_name": "llm-0",
            "pod_uid": "uid-0",
            "node_name": "node-0",
            "burst": 100,  # the engine conditions' own Events come first
        },
    }
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    sc = start_sidecar(
        "--simulate", "--config", str(config), "--log-level", "info", log_path=tmp_path / "log"
    )
    try:

        def verified() -> bool:
            got = conditions(sc.addr)
            change = got.get("engine/prod/change")
            return "actions/prod/rollback" in got and change is not None and change.status == 1

        wait_until(verified, timeout=30, what="engine verified")
        write_engine(engine_dir, plan_bytes(2), name="prod", version="2", sha256="0" * 64)
        try:
            events = wait_until(
                lambda: [e for e in api.events.values() if e.get("reason") == "EngineRolledBack"],
                timeout=20,
                what="the rollback Event",
            )
        except AssertionError as exc:
            got = {
                n: (c.status, c.reason, c.message[:100], dict(c.labels))
                for n, c in conditions(sc.addr).items()
            }
            raise AssertionError(f"{exc}; conditions {got}") from None
        assert "calls: parked prod version 2" in events[0]["message"]
        assert index(mlserver.url, "prod") == ["1"] and infer_version(mlserver.url, "prod")[0] == "1"
        rb = conditions(sc.addr)["actions/prod/rollback"]
        assert rb.reason == "RolledBack"
        assert (
            rb.labels["version"] == "2" and rb.labels["pinned"] == "1" and rb.labels["last_outcome"] == "ok"
        )
        assert "EngineChecksumMismatch" in rb.labels["last_evidence"]
        records = [r for r in sc.log_records() if r.get("msg") == "engine action"]
        assert records and records[-1]["action"] == "rollback" and records[-1]["outcome"] == "ok"
        metrics = wait_until(lambda: _metrics(sc.http_base), timeout=5)
        assert 'trt_health_actions_total{action="rollback",engine="prod",outcome="ok"} 1.0' in metrics
    finally:
        sc.kill()
        api.close()


def _metrics(base: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"{base}/metrics", timeout=2) as r:
        return str(r.read().decode())
