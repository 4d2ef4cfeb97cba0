"""A reload whose replacement cannot be built or started leaves the old component running:
the GPU stays monitored (a later Xid 79 still turns readiness NOT_SERVING)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import parse_config
from sidecar.testing.reload import BASE, overrides

from .conftest import NOT_SERVING, SERVING, AppThread, check, wait_until


def _app(make_app: Any, tmp_path: Path) -> tuple[AppThread, Path]:
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"gpus": [{"reset": 0}]}))
    doc = {**BASE, "scenario": str(scenario), "state_dir": str(tmp_path / "state")}
    app: AppThread = make_app(parse_config(doc))
    wait_until(lambda: check(app.addr, "readiness") == SERVING, timeout=15)
    return app, scenario


def _xid79_seen(app: AppThread) -> bool:
    conditions = {c.name: c for c in app.app.snapshot()[0]}
    xid = conditions.get("gpu/GPU-sim-0/xid")
    return xid is not None and xid.last.reason == "XidFatal79"


@pytest.mark.parametrize("fails", ["build", "start"])
def test_failed_replacement_keeps_the_gpu_monitored(make_app: Any, tmp_path: Path, fails: str) -> None:
    app, scenario = _app(make_app, tmp_path)
    gpu = app.app.component("gpu")
    original = app.app.build_section
    attempts: list[str] = []

    def broken(section: str, cfg: Any, registry: Any) -> Any:
        if section != "gpu":
            return original(section, cfg, registry)
        attempts.append(section)
        if fails == "build":  # every GPU build fails from now on (a file both builds read)
            raise RuntimeError("cannot build")
        obj = original(section, cfg, registry)

        async def start(_sink: Any) -> None:
            raise RuntimeError("cannot start")

        obj.start = start
        return obj

    app.app.build_section = broken  # type: ignore[method-assign]
    changed = {**BASE, "gpu": {"poll_interval": "0.3s"}, "scenario": str(scenario)}
    assert not app.call(app.app.reload_config(overrides(changed, tmp_path)))
    assert attempts  # witness: the replacement was tried
    assert app.app.metrics.config_reloads.labels("rejected")._value.get() == 1
    assert app.app.component("gpu") is gpu  # the old one was never stopped
    assert check(app.addr, "readiness") == SERVING
    scenario.write_text(yaml.safe_dump({"gpus": [{"reset": 0, "xid": [79]}]}))
    wait_until(lambda: _xid79_seen(app), timeout=10)
    assert check(app.addr, "readiness") == NOT_SERVING
    assert check(app.addr, "gpu") == NOT_SERVING
