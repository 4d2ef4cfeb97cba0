"""Config reload that restarts components: only changed sections restart, state is kept, and a
component that cannot be built leaves the old one running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.config import parse_config
from sidecar.testing.reload import BASE, overrides

from .conftest import SERVING, AppThread, check, wait_until


def test_only_changed_sections_restart_and_failures_keep_old(make_app: Any, tmp_path: Path) -> None:
    """Changing gpu.poll_interval restarts the GPU component only (the canary worker keeps its
    PID, readiness never drops); a component that fails to build is rejected, the old runs on."""
    app: AppThread = make_app(parse_config({**BASE, "state_dir": str(tmp_path)}))
    wait_until(lambda: check(app.addr, "readiness") == SERVING, timeout=15)
    canary = app.app.component("canary")
    gpu_before = app.app.component("gpu")
    worker_pid = canary.supervisor.proc.pid

    changed = {**BASE, "gpu": {"poll_interval": "0.3s"}}
    assert app.call(app.app.reload_config(overrides(changed, tmp_path)))
    assert app.app.component("gpu") is not gpu_before
    assert app.app.component("canary") is canary
    assert canary.supervisor.proc.pid == worker_pid
    assert check(app.addr, "readiness") == SERVING

    def broken(section: str, cfg: Any, registry: Any) -> Any:
        if section == "gpu" and cfg.components["gpu"].poll_interval_s == 0.4:
            raise RuntimeError("cannot build")
        return original(section, cfg, registry)

    original = app.app.build_section
    app.app.build_section = broken  # type: ignore[method-assign]
    gpu_current = app.app.component("gpu")
    bad = {**BASE, "gpu": {"poll_interval": "0.4s"}}
    assert not app.call(app.app.reload_config(overrides(bad, tmp_path)))
    assert app.app.metrics.config_reloads.labels("rejected")._value.get() == 1
    assert app.app.component("gpu") is gpu_current  # the old component was never stopped
    assert app.app.config.components["gpu"].poll_interval_s == 0.3  # old config stays
    wait_until(lambda: check(app.addr, "readiness") == SERVING, timeout=10)
    assert check(app.addr, "gpu") == SERVING


def test_conditions_no_longer_reported_are_dropped_with_their_metrics(make_app: Any, tmp_path: Path) -> None:
    """A condition the rebuilt components no longer report leaves the diagnostics and /metrics."""
    import urllib.request

    app: AppThread = make_app(parse_config({**BASE, "state_dir": str(tmp_path)}))
    wait_until(lambda: check(app.addr, "readiness") == SERVING, timeout=15)
    from sidecar.core.values import CheckResult

    app.submit(CheckResult.passed("old/only", gates=frozenset({"readiness"})))
    app.call(app.app.reload_config(overrides({**BASE, "gpu": {"poll_interval": "0.3s"}}, tmp_path)))

    def series() -> list[str]:
        """The old condition's state series (transition counters are history and stay)."""
        with urllib.request.urlopen(app.http_base + "/metrics", timeout=3) as r:
            text = r.read().decode()
        return [
            ln
            for ln in text.splitlines()
            if ln.startswith(("trt_health_condition_ok{", "trt_health_condition_gating{"))
            and 'condition="old/only"' in ln
        ]

    assert len(series()) == 2
    wait_until(lambda: not series(), timeout=20)
    assert all(c.name != "old/only" for c in app.app.snapshot()[0])
    assert any(c.name == "canary" for c in app.app.snapshot()[0])
