"""`serve` as a real process: exit codes, signals, config reload."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import REPO, SERVING, check, wait_until


def run_serve(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_config_error_exit_code_names_every_field(tmp_path: Path) -> None:
    """A bad config exits 2 and names each bad field."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grpc:\n  port: nope\nhttp:\n  prot: 1\n")
    res = run_serve("--config", str(cfg))
    assert res.returncode == 2
    assert "grpc.port: must be an integer" in res.stderr
    assert "http.prot: unknown field" in res.stderr


def test_scenario_without_simulate_is_config_error(tmp_path: Path) -> None:
    """--scenario without --simulate exits 2 with the reason."""
    res = run_serve("--scenario", str(tmp_path / "s.yaml"), "--grpc-port", "0", "--http-port", "0")
    assert res.returncode == 2
    assert "scenario: needs --simulate" in res.stderr


def test_port_in_use_exits_3(tmp_path: Path) -> None:
    """A port that cannot be bound exits 3 with the address in the log."""
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::", 0))
        s.listen()
        port = s.getsockname()[1]
        res = run_serve(
            "--simulate", "--grpc-port", str(port), "--http-port", "0", "--state-dir", str(tmp_path)
        )
    assert res.returncode == 3, res.stderr
    assert "cannot bind" in res.stderr


def test_sigterm_clean_exit(sidecar_proc: Any) -> None:
    """SIGTERM: NOT_SERVING first, then exit 0."""
    sp = sidecar_proc("--simulate")
    assert check(sp.addr, "startup") == SERVING
    assert sp.stop(signal.SIGTERM) == 0
    msgs = [r.get("msg") for r in sp.log_records()]
    assert "shutdown requested" in msgs and msgs[-1] == "sidecar stopped"


def test_startup_serving_fast(sidecar_proc: Any) -> None:
    """startup and liveness are SERVING within a second of the process listening."""
    t0 = time.monotonic()
    sp = sidecar_proc("--simulate")
    wait_until(lambda: _serving(sp.addr, "startup"), timeout=5)
    assert _serving(sp.addr, "liveness")
    assert time.monotonic() - t0 < 10


def _serving(addr: str, service: str) -> bool:
    try:
        return check(addr, service, timeout=1) == SERVING
    except Exception:
        return False


def test_reload_valid_applies_invalid_keeps_old(sidecar_proc: Any, tmp_path: Path) -> None:
    """SIGHUP with a valid config applies it; with an invalid one the old config stays."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("policy:\n  failure_threshold: 1\n")
    sp = sidecar_proc("--simulate", "--config", str(cfg))
    cfg.write_text("policy:\n  failure_threshold: 0\n")
    sp.proc.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any(r.get("msg") == "config reload rejected, old config stays" for r in sp.log_records())
    )
    rejected = [r for r in sp.log_records() if r.get("msg", "").startswith("config reload rejected")]
    assert "policy.failure_threshold: must be >= 1" in str(rejected[0]["problems"])
    assert check(sp.addr, "liveness") == SERVING
    cfg.write_text("policy:\n  failure_threshold: 2\n")
    sp.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any(r.get("msg") == "config reloaded" for r in sp.log_records()))
    assert sp.stop() == 0


def test_without_simulate_and_without_gpu_not_serving_with_reason(sidecar_proc: Any) -> None:
    """No --simulate on a machine without a GPU: the sidecar runs (startup and liveness
    SERVING) and readiness is NOT_SERVING with the NVML reason; it never simulates silently."""
    import json
    import urllib.error
    import urllib.request

    sp = sidecar_proc()
    assert check(sp.addr, "startup") == SERVING
    assert check(sp.addr, "liveness") == SERVING

    def healthz() -> dict[str, Any]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{sp.http_port}/healthz", timeout=2) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as exc:
            return dict(json.loads(exc.read()))

    def nvml_reported() -> bool:
        return "nvml" in healthz()["checks"]

    wait_until(nvml_reported, timeout=10)
    doc = healthz()
    assert doc["status"] == "NOT_SERVING"
    nvml = doc["checks"]["nvml"]
    assert nvml["ok"] is False and nvml["reason"] in ("NvmlUnavailable", "DriverNotLoaded")
    assert any(r.startswith("nvml: ") for r in doc["services"]["readiness"]["reasons"])
    assert "simulated" not in json.dumps(doc["checks"]["nvml"]).lower()
    assert sp.stop() == 0
