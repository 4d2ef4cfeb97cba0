"""Trends in a real `serve --simulate` process: a sustained rise of the real canary worker's
latency becomes a LatencyDrift WARNING (condition, metric, log), and readiness stays SERVING."""

from __future__ import annotations

import json
import math
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.integration.conftest import SERVING, SidecarProcess, check, wait_until

CONFIG = {
    "canary": {"interval": "50ms", "allow_fast_interval": True},
    "trends": {"interval": "100ms", "latency": {"enabled": True, "warmup": 20}},
}


def healthz(sp: SidecarProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{sp.http_port}/healthz", timeout=5) as r:
        doc: dict[str, Any] = json.loads(r.read())
    return doc


def metric(sp: SidecarProcess, name: str, **labels: str) -> float | None:
    """The value of the first series of ``name`` carrying ``labels`` (None: no such series)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{sp.http_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if line.startswith("#") or series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            return float(value)
    return None


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def test_canary_latency_drift_warns_and_never_gates(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    scenario = tmp_path / "scenario.yaml"
    write_atomic(scenario, {"gpus": [{}], "canary": {"mode": "ok"}})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    sp = sidecar_proc("--simulate", "--scenario", str(scenario), "--config", str(config))
    wait_until(lambda: check(sp.addr, "readiness") == SERVING, timeout=30)

    def baseline() -> float | None:
        v = metric(sp, "trt_health_trend_latency_baseline_seconds")
        return v if v is not None and not math.isnan(v) else None

    base = wait_until(baseline, timeout=60)
    assert base > 0
    assert healthz(sp)["checks"]["trends/canary-latency"]["ok"] is True

    # the worker sleeps 30 ms more inside every timed run: a sustained step
    write_atomic(scenario, {"gpus": [{}], "canary": {"mode": "slow", "delay_ms": 30}})

    def drift() -> dict[str, Any] | None:
        entry: dict[str, Any] = healthz(sp)["checks"]["trends/canary-latency"]
        return entry if entry["reason"] == "LatencyDrift" else None

    entry = wait_until(drift, timeout=60)
    assert entry["severity"] == "warning" and entry["gating"] is False
    assert entry["labels"]["cause"] in ("unknown", "host_slow", "gpu_shared")
    # the warning is visible and readiness is unaffected at the same time
    assert check(sp.addr, "readiness") == SERVING
    assert (
        metric(
            sp,
            "trt_health_trend_warning",
            subject="trends/canary-latency",
            reason="LatencyDrift",
        )
        == 1
    )
    assert any(r.get("msg") == "canary latency drift" for r in sp.log_records())
