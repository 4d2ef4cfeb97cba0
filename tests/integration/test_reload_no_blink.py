"""Make-before-break reloads: a config change that does not change the evidence never changes
readiness (a grpc-go client with client-side health checking would drop the backend)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from sidecar.config import parse_config

from .conftest import SERVING, AppThread, check, health_pb2, health_stub, wait_until
from .test_fault_matrix import Sidecar, own_sidecar, wait_for
from .test_reload import BASE, overrides

__all__ = ["own_sidecar"]  # the fixture, imported for the process-level test


class Watcher:
    """Every status a Watch stream on one service is sent."""

    def __init__(self, addr: str, service: str) -> None:
        self.channel, stub = health_stub(addr)
        self.seen: list[int] = []
        self._stream = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for resp in self._stream:
                self.seen.append(int(resp.status))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._stream.cancel()
        self.channel.close()
        self._thread.join(5)


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
        before = {s: app.app._slots[s] for s in ("gpu", "canary")}
        old_pid = before["canary"].supervisor.proc.pid
        assert app.call(app.app.reload_config(overrides({**BASE, **CHANGES[change]}, tmp_path)), timeout=30)
        # witness: the changed sections were replaced and the new ones report passing results
        for section in CHANGES[change]:
            assert app.app._slots[section] is not before[section]
        canary = app.app._slots["canary"]
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


def test_changing_every_section_at_once_never_blinks_readiness(own_sidecar: Sidecar) -> None:
    """A real `serve` process with gpu, canary, engines and workload: every section's interval
    changes in one config write; readiness stays SERVING throughout (a Watch stream sees it)."""
    sc = own_sidecar
    assert sc.proc is not None
    watch = Watcher(sc.proc.addr, "readiness")
    try:
        wait_until(lambda: watch.seen == [SERVING], timeout=5)
        applied = sc.metric("trt_health_config_reloads_total", {"result": "applied"})
        cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in sc.config.items()}
        cfg["gpu"]["poll_interval"] = "0.3s"
        cfg["canary"]["interval"] = "0.7s"
        cfg["engines"]["check_interval"] = "2s"
        cfg["workload"]["interval"] = "0.3s"
        sc.write_config(cfg)
        wait_for(
            lambda: sc.metric("trt_health_config_reloads_total", {"result": "applied"}) > applied,
            30,
            sc,
            "reload applied",
        )
        # witness: the replacements report (a canary passed after the swap, every check known)
        passes = sc.metric("trt_health_canary_results_total", {"outcome": "pass"})
        wait_for(
            lambda: sc.metric("trt_health_canary_results_total", {"outcome": "pass"}) > passes,
            10,
            sc,
            "a canary of the new worker passed",
        )
        assert sc.healthy()
        assert watch.seen == [SERVING], f"readiness changed during the reload: {watch.seen}"
    finally:
        watch.close()
