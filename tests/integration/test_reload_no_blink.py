"""Make-before-break reloads: a config change that does not change the evidence never changes
readiness (a grpc-go client with client-side health checking would drop the backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.config import parse_config
from sidecar.testing.reload import BASE, Watcher, overrides

from .conftest import SERVING, AppThread, check, wait_until

CHANGES = {
    "canary": {"canary": {**BASE["canary"], "interval": "2s"}},
    "gpu": {"gpu": {"poll_interval": "0.3s"}},
    "both": {"canary": {**BASE["canary"], "interval": "2s"}, "gpu": {"poll_interval": "0.3s"}},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_config_change_never_blinks_readiness(make_app: Any, tmp_path: Path, change: str) -> None:
    app: AppThread = make_app(parse_config({**BASE, "state_dir": str(tmp_path)}))
    wait_until(lambda: check(app.addr, "readiness") == SERVING, timeout=15)
    watch = Watcher(app.addr, "readiness")
    try:
        wait_until(lambda: watch.seen == [SERVING], timeout=5)
        before = {s: app.app.component(s) for s in ("gpu", "canary")}
        old_pid = before["canary"].supervisor.proc.pid
        assert app.call(app.app.reload_config(overrides({**BASE, **CHANGES[change]}, tmp_path)), timeout=30)
        # witness: the changed sections were replaced and the new ones report passing results
        for section in CHANGES[change]:
            assert app.app.component(section) is not before[section]
        canary = app.app.component("canary")
        if "canary" in CHANGES[change]:
            assert canary.supervisor.proc.pid != old_pid
            assert before["canary"].supervisor.proc is None  # the old worker was retired
        wait_until(lambda: canary.passes >= 1, timeout=10)
        conditions = {c.name: c for c in app.app.snapshot()[0]}
        assert conditions["canary"].last.reason == "CanaryPassed"
        assert check(app.addr, "readiness") == SERVING
        assert watch.seen == [SERVING], f"readiness changed during the reload: {watch.seen}"
    finally:
        watch.close()


def test_retired_components_hear_no_more_scenario_changes(make_app: Any, tmp_path: Path) -> None:
    """Each reload retires components; they (and the GPU backend) leave the scenario's
    listeners, so reloads do not pile up listeners doing work for stopped components."""
    app: AppThread = make_app(parse_config({**BASE, "state_dir": str(tmp_path)}))
    wait_until(lambda: check(app.addr, "readiness") == SERVING, timeout=15)
    sf = app.app.scenario
    assert sf is not None
    before = sf.listeners
    assert before >= 3  # witness: the GPU component, its backend and the canary listen
    for i in range(3):
        change = {
            "gpu": {"poll_interval": f"0.{3 + i}s"},
            "canary": {**BASE["canary"], "interval": f"{2 + i}s"},
        }
        assert app.call(app.app.reload_config(overrides({**BASE, **change}, tmp_path)), timeout=30)
    assert sf.listeners == before
