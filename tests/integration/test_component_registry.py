"""Adding a component is one registry entry: an app built with one more entry builds it with
its own metrics registry, schedules its checks (readiness waits for them and follows them),
exports its metrics, and a reload that changes its section replaces it make-before-break."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import Counter

import sidecar.runtime.reload as reload_module
from sidecar.app import SidecarApp
from sidecar.components import BuildContext, ComponentEntry
from sidecar.config.section import Section
from sidecar.core.protocols import Check, ResultSink
from sidecar.core.values import CheckResult, Severity
from sidecar.publish.events_config import EventsConfig
from sidecar.testing import await_until
from sidecar.testing.kube import FakeApiServer

from .conftest import core_config


@dataclasses.dataclass(frozen=True)
class ExtraConfig:
    healthy: bool = True


class ExtraCheck:
    name = "extra/disk"
    interval_s = 0.05
    timeout_s = 1.0

    def __init__(self, config: ExtraConfig, runs: Counter) -> None:
        self._config = config
        self._runs = runs

    async def run(self) -> Sequence[CheckResult]:
        self._runs.inc()
        if self._config.healthy:
            return [CheckResult.passed(self.name, severity=Severity.CRITICAL)]
        return [CheckResult.failed(self.name, "DiskFull", "no room", severity=Severity.CRITICAL)]

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [CheckResult.unknown(self.name, "Timeout", "slow")]


class ExtraComponent:
    name = "extra"

    def __init__(self, config: ExtraConfig, ctx: BuildContext) -> None:
        self._check = ExtraCheck(
            config, Counter("extra_runs", "runs of the extra check", registry=ctx.registry)
        )
        self.started = False
        self.stopped = False

    def checks(self) -> Sequence[Check]:
        return [self._check]

    async def start(self, sink: ResultSink) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


def _parse(sec: Section) -> ExtraConfig:
    return ExtraConfig()


EXTRA: ComponentEntry[ExtraConfig, ExtraComponent] = ComponentEntry("extra", _parse, ExtraComponent)


def _serving(app: SidecarApp) -> bool:
    return bool(app.snapshot()[1]["readiness"].serving)


async def test_one_entry_adds_a_component_that_gates_readiness_and_reloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = SidecarApp(core_config(components={"extra": ExtraConfig()}), components=(EXTRA,))
    await app.start()
    try:
        first = app.component("extra")
        assert isinstance(first, ExtraComponent) and first.started
        assert app.components == [first]
        await await_until(lambda: _serving(app))
        await await_until(lambda: (app.registry.get_sample_value("extra_runs_total") or 0) >= 1)

        new = dataclasses.replace(app.config, components={"extra": ExtraConfig(healthy=False)})
        monkeypatch.setattr(reload_module, "load_config", lambda **_kw: new)
        assert await app.reload_config()
        second = app.component("extra")
        assert isinstance(second, ExtraComponent) and second is not first
        assert first.stopped and not second.stopped
        await await_until(lambda: not _serving(app))
        assert any("DiskFull" in r for r in app.snapshot()[1]["readiness"].reasons)
    finally:
        await app.stop()
    assert second.stopped


async def test_a_section_without_config_builds_nothing() -> None:
    """An entry whose section the config does not name: no component, readiness not held."""
    app = SidecarApp(core_config(components={}), components=(EXTRA,))
    await app.start()
    try:
        assert app.component("extra") is None
        await await_until(lambda: _serving(app))
    finally:
        await app.stop()


async def test_the_events_entry_tells_the_emitter_every_transition(tmp_path: Path) -> None:
    """Events, a transition listener in the registry: enabled, a FATAL result submitted to the
    app reaches the API server as a Warning Event; it is no component with checks."""
    token = tmp_path / "token"
    token.write_text("token-one\n")
    api = FakeApiServer()
    events = EventsConfig(
        enabled=True,
        namespace="inference",
        pod_name="llm-0",
        pod_uid="uid-0",
        node_name="node-0",
        api_server=api.url,
        token_file=token,
        ca_file=tmp_path / "no-ca.crt",
        namespace_file=tmp_path / "no-namespace",
    )
    app = SidecarApp(core_config(components={"events": events}))
    await app.start()
    try:
        assert app.component("events") is not None and app.components == []
        app.submit(
            [CheckResult.failed("gpu/GPU-1/xid", "XidFatal79", "fallen off the bus", severity=Severity.FATAL)]
        )
        (call,) = await await_until(api.snapshot)
        assert call.body["reason"] == "XidFatal79" and call.body["type"] == "Warning"
    finally:
        await app.stop()
        api.close()
