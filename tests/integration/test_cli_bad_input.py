"""`serve` with bad input exits 2 (config error) naming the file, field or variable, never 1
("internal error") or 3 (bind error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"grpc:\n  host: \xff\n", "not UTF-8"),
        (b"grpc: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested deeper than"),
        (b"shutdown_grace: 100000000h\n", "shutdown_grace: must be <="),
        (b"gpu: {poll_interval: .nan}\n", "gpu.poll_interval: must be a finite duration"),
    ],
)
def test_bad_config_file_exits_2_naming_it(tmp_path: Path, data: bytes, fragment: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(data)
    res = run_serve("--config", str(cfg), "--grpc-port", "0", "--http-port", "0")
    assert res.returncode == 2, res.stderr[-2000:]
    assert fragment in res.stderr
    assert "internal error" not in res.stderr
    assert len(res.stderr) < 4000


def test_tls_port_equal_to_http_port_exits_2(tmp_path: Path) -> None:
    """grpc.tls.port == http.port: exit 2 naming the field (was exit 3 at bind time)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "http: {port: 19481}\ngrpc: {port: 19480, tls: {port: 19481, cert_file: c.pem, key_file: k.pem}}\n"
    )
    res = run_serve("--config", str(cfg))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "grpc.tls.port: must differ from http.port (19481)" in res.stderr


def test_empty_env_path_segment_exits_2_naming_the_variable() -> None:
    res = run_serve("--grpc-port", "0", "--http-port", "0", env={"TRT_HEALTH__gpu____x": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "TRT_HEALTH__gpu____x: empty path segment" in res.stderr
