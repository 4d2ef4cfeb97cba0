"""The tensor-core SDC screen in a real ``serve --simulate`` process (numpy model of the kernel
as the device): readiness follows it, the finding survives a restart through the state
directory, and only a GPU reset plus passing rounds clear it."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml

from sidecar.canary import sdc
from sidecar.canary.sdc_screen import STATE_FILE
from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc

from .conftest import SidecarProcess, check, start_sidecar, wait_until

SERVING, NOT_SERVING = 1, 2
UUID = "GPU-00000000-0000-0000-0000-000000000000"

CONFIG = {
    "gpu": {"poll_interval": "0.2s"},
    "canary": {
        "runner": "tensor-core",
        "interval": "0.3s",
        "allow_fast_interval": True,
        "timeout": "2s",
        "first_timeout": "5s",
        "restart_backoff_initial": "0.1s",
        "restart_backoff_max": "0.5s",
        "warmup_runs": 0,
        "recovery_passes": 2,
        "tensor_core": {"simulated_sms": 16, "blocks_per_sm": 2, "allow_fault_injection": True},
    },
}


def write_scenario(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def canary(sp: SidecarProcess) -> Any:
    with grpc.insecure_channel(sp.addr) as ch:
        resp = diagnostics_pb2_grpc.DiagnosticsStub(ch).GetConditions(
            diagnostics_pb2.ConditionsRequest(prefix="canary"), timeout=2
        )
    return next((c for c in resp.conditions if c.name == "canary"), None)


def reason_is(sp: SidecarProcess, reason: str) -> bool:
    c = canary(sp)
    return c is not None and c.reason == reason


def metrics(sp: SidecarProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{sp.http_port}/metrics", timeout=2) as r:
        return str(r.read().decode())


def start(tmp_path: Path, scenario: Path) -> SidecarProcess:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    return start_sidecar(
        tmp_path,
        "--simulate",
        "--scenario",
        str(scenario),
        "--config",
        str(cfg),
        env={sdc.INJECTION_ENV: "1"},
    )


def test_sdc_finding_gates_readiness_survives_restart_and_clears_on_reset_plus_passes(
    tmp_path: Path,
) -> None:
    scenario = tmp_path / "scenario.yaml"
    write_scenario(scenario, {"canary": {"gpu_fault": "none"}})
    sp = start(tmp_path, scenario)
    try:
        wait_until(lambda: check(sp.addr, "readiness") == SERVING, timeout=20)
        assert reason_is(sp, "CanaryPassed")
        text = metrics(sp)
        assert f'trt_health_sdc_sms_covered{{gpu="{UUID}"}} 16.0' in text
        write_scenario(scenario, {"canary": {"gpu_fault": "sdc_flip:9:30:int8"}})
        wait_until(lambda: reason_is(sp, "SilentDataCorruption"), timeout=10)
        c = canary(sp)
        assert c.severity == "fatal" and "SM(s) 9" in c.message and "xor 0x40000000" in c.message
        wait_until(lambda: check(sp.addr, "readiness") == NOT_SERVING, timeout=5)
        assert "SilentDataCorruption" in (tmp_path / "state" / STATE_FILE).read_text()
    finally:
        sp.stop()

    # The fault is gone, the sidecar restarts: the finding is still there (persisted).
    write_scenario(scenario, {"canary": {"gpu_fault": "none"}})
    sp = start(tmp_path, scenario)
    try:
        wait_until(lambda: reason_is(sp, "SilentDataCorruption"), timeout=20)
        assert "persisted" in canary(sp).message
        assert check(sp.addr, "readiness") == NOT_SERVING
        write_scenario(scenario, {"canary": {"gpu_fault": "none"}, "gpus": [{"reset": 1}]})
        wait_until(lambda: check(sp.addr, "readiness") == SERVING, timeout=20)
        assert reason_is(sp, "CanaryPassed")
        assert "SilentDataCorruption" not in (tmp_path / "state" / STATE_FILE).read_text()
        assert f'trt_health_sdc_rounds_total{{gpu="{UUID}",outcome="pass"}}' in metrics(sp)
    finally:
        sp.stop()
