"""The actions package's I/O edge and config: request shapes (Triton override), MLServer
parking on a real folder, config validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.actions.config import parse_actions_config
from sidecar.actions.repository import (
    PARKED,
    SETTINGS,
    ActionCallError,
    MLServerDriver,
    RepositoryClient,
    TritonDriver,
)
from sidecar.config import Section


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((request.method, request.url.path, body))
        if request.url.path.endswith("/config"):
            return httpx.Response(200, json={"name": "m", "backend": "tensorrt", "max_batch_size": 8})
        if request.url.path == "/v2/repository/index":
            return httpx.Response(
                200,
                json=[
                    {"name": "m", "version": "1", "state": "READY"},
                    {"name": "m", "version": "2", "state": "UNAVAILABLE"},
                    {"name": "other", "version": "1", "state": "READY"},
                ],
            )
        if "/versions/" in request.url.path:
            return httpx.Response(200 if "/versions/1/" in request.url.path else 400)
        return httpx.Response(200, json={})


async def test_triton_pin_sends_the_version_policy_override() -> None:
    rec = Recorder()
    client = RepositoryClient("http://triton", 1.0, httpx.MockTransport(rec.handler))
    try:
        await TritonDriver(client).pin("m", "1")
        served = await client.served("m")
        await TritonDriver(client).pin("m", None)
    finally:
        await client.close()
    method, path, body = rec.calls[1]
    assert (method, path) == ("POST", "/v2/repository/models/m/load")
    config = json.loads(body["parameters"]["config"])
    assert config["version_policy"] == {"specific": {"versions": [1]}}
    assert config["backend"] == "tensorrt"  # the rest of the current config is kept
    assert served.listed == ("1", "2") and served.ready == ("1",)
    assert rec.calls[-1] == ("POST", "/v2/repository/models/m/load", {})  # release: no override


async def test_triton_rejects_a_non_integer_version() -> None:
    client = RepositoryClient("http://triton", 1.0, httpx.MockTransport(Recorder().handler))
    try:
        with pytest.raises(ActionCallError, match="integers"):
            await TritonDriver(client).pin("m", "fp16")
    finally:
        await client.close()


def write_settings(root: Path, folder: str, name: str, version: str) -> Path:
    d = root / folder
    d.mkdir(parents=True)
    p = d / SETTINGS
    p.write_text(json.dumps({"name": name, "parameters": {"version": version}}), encoding="utf-8")
    return d


async def test_mlserver_parks_other_versions_then_unparks(tmp_path: Path) -> None:
    v1 = write_settings(tmp_path, "m/v1", "m", "1")
    v2 = write_settings(tmp_path, "m/v2", "m", "2")
    other = write_settings(tmp_path, "o/v2", "o", "2")
    rec = Recorder()
    client = RepositoryClient("http://mlserver", 1.0, httpx.MockTransport(rec.handler))
    driver = MLServerDriver(client, tmp_path)
    try:
        calls = await driver.pin("m", "1")
        assert (v1 / SETTINGS).exists() and (v2 / PARKED).exists() and not (v2 / SETTINGS).exists()
        assert (other / SETTINGS).exists()  # another model is never touched
        assert "parked m version 2" in calls and rec.calls[-1][1] == "/v2/repository/models/m/load"
        await driver.pin("m", None)
        assert (v1 / SETTINGS).exists() and (v2 / SETTINGS).exists()
        with pytest.raises(ActionCallError, match="no model-settings"):
            await driver.pin("m", "9")
    finally:
        await client.close()


async def test_unreachable_server_is_an_action_call_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = RepositoryClient("http://x", 1.0, httpx.MockTransport(refuse))
    try:
        with pytest.raises(ActionCallError, match="ConnectError"):
            await client.load("m")
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"enabled": True, "engines": [{"engine": "m", "rollback": True}]}, "url"),
        (
            {"enabled": True, "url": "http://x", "engines": [{"engine": "m", "rollback": True}]},
            "repository_dir",
        ),
        ({"rollback": {"latency_ratio": 0.5}}, "latency_ratio"),
        ({"engines": [{"engine": "m"}, {"engine": "m"}]}, "duplicate"),
        ({"server": "vllm"}, "server"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_config_problems_are_named(raw: dict[str, Any], problem: str) -> None:
    errors: list[str] = []
    parse_actions_config(Section(raw, "actions", errors))
    assert any(problem in e for e in errors), errors


def test_config_defaults_are_off() -> None:
    errors: list[str] = []
    cfg = parse_actions_config(Section({}, "actions", errors))
    assert errors == [] and not cfg.enabled and not cfg.dry_run and cfg.engines == ()
    errors = []
    cfg = parse_actions_config(
        Section(
            {"enabled": True, "server": "triton", "url": "http://t/", "engines": [{"engine": "m"}]},
            "actions",
            errors,
        )
    )
    assert errors == [] and cfg.url == "http://t" and not cfg.engines[0].rollback


async def test_a_reload_hands_over_what_the_old_component_knew() -> None:
    """The replacement built by a reload takes the evidence and the machines: version 1 that
    verified under the old component is still the last good one (dry run: no server)."""
    from prometheus_client import CollectorRegistry

    from sidecar.actions.component import ActionsComponent
    from sidecar.core.values import CheckResult

    errors: list[str] = []
    raw = {
        "enabled": True,
        "dry_run": True,
        "server": "triton",
        "url": "http://t",
        "engines": [{"engine": "m", "rollback": True}],
    }
    cfg = parse_actions_config(Section(raw, "actions", errors))
    assert errors == []

    def results(version: str, bad: bool = False) -> list[CheckResult]:
        labels = {"engine": "m", "version": version}
        out = []
        for suffix in ("manifest", "file", "checksum", "plan", "version", "arch"):
            name = f"engine/m/{suffix}"
            out.append(
                CheckResult.failed(name, "Bad", "bad", labels=labels)
                if bad and suffix == "checksum"
                else CheckResult.passed(name, labels=labels)
            )
        return out

    old = ActionsComponent(cfg, registry=CollectorRegistry())
    old.observe(results("1"))
    new = ActionsComponent(cfg, registry=CollectorRegistry())
    await new.take_over(old)
    new.observe(results("2", bad=True))
    await new.tick()
    assert [(r.kind, r.target, r.outcome) for r in new.history] == [("rollback", "1", "dry_run")]
    fresh = ActionsComponent(cfg, registry=CollectorRegistry())
    fresh.observe(results("2", bad=True))
    await fresh.tick()
    assert not fresh.history  # without the hand-over it would not know a good version
    for c in (old, new, fresh):
        await c.stop()
