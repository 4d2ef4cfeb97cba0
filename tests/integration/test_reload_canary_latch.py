"""A canary finding survives a reload of the canary section: the replacement starts with the
old component's latches (a mismatch is sticky until a GPU reset and passing rounds, never
until a config change)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import parse_config
from sidecar.testing.reload import BASE, Watcher, overrides

from .conftest import NOT_SERVING, SERVING, AppThread, check, wait_until


def _write(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def _canary(app: AppThread) -> Any:
    return {c.name: c for c in app.app.snapshot()[0]}["canary"].last


def _canary_runs(app: AppThread) -> float:
    runs = app.app.metrics.check_runs
    return float(sum(runs.labels("canary", outcome)._value.get() for outcome in ("ok", "fail")))


def test_a_canary_mismatch_stays_latched_across_a_canary_reload(make_app: Any, tmp_path: Path) -> None:
    """One passing canary would end the fatal episode (fatal_recovery_threshold 1): neither the
    replacement's own rounds nor a pass it held while staged may make readiness SERVING."""
    scenario = tmp_path / "scenario.yaml"
    _write(scenario, {"gpus": [{"reset": 0}], "canary": {"mode": "wrong"}})
    base = {**BASE, "scenario": str(scenario), "policy": {"fatal_recovery_threshold": 1}}
    app: AppThread = make_app(parse_config({**base, "state_dir": str(tmp_path / "state")}))
    wait_until(lambda: _canary(app).reason == "CanaryMismatch", timeout=20)
    watch = Watcher(app.addr, "readiness")
    try:
        wait_until(lambda: watch.seen == [NOT_SERVING], timeout=5)
        _write(scenario, {"gpus": [{"reset": 0}], "canary": {"mode": "ok"}})  # the fault is gone
        old = app.app.component("canary")
        canary = {**BASE["canary"], "interval": "0.5s", "allow_fast_interval": True}
        assert app.call(app.app.reload_config(overrides({**base, "canary": canary}, tmp_path / "state")), 30)
        assert app.app.component("canary") is not old  # witness: the canary was replaced
        runs = _canary_runs(app)
        # witness: the replacement ran more rounds than a fresh one needs to recover
        wait_until(lambda: _canary_runs(app) >= runs + 2, timeout=20)
        assert _canary(app).reason == "CanaryMismatch"
        assert check(app.addr, "readiness") == NOT_SERVING
        assert watch.seen == [NOT_SERVING], f"readiness changed during the reload: {watch.seen}"
        # the carried latch still clears on evidence: a GPU reset, then matching canaries
        _write(scenario, {"gpus": [{"reset": 1}], "canary": {"mode": "ok"}})
        wait_until(lambda: _canary(app).reason == "CanaryPassed", timeout=30)
        wait_until(lambda: check(app.addr, "readiness") == SERVING, timeout=20)
    finally:
        watch.close()
