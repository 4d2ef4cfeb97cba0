"""`serve` and `status` as real processes under bad input and early signals (issue #9 items
6 and 8, issue #10 items 6, 7 and 18)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.testing import sidecar_argv

from .conftest import NOT_SERVING, REPO, SERVING, check, wait_until


def _engine_config(tmp_path: Path, manifest: bytes) -> Path:
    (tmp_path / "model.plan").write_bytes(b"\0" * 4096)
    m = tmp_path / "model.plan.manifest.yaml"
    m.write_bytes(manifest)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"engines:\n  list:\n    - {{name: prod, manifest: {m}}}\n",
        encoding="utf-8",
    )
    return cfg


def test_bad_manifest_at_start_is_reported_and_sigterm_exits_0(sidecar_proc: Any, tmp_path: Path) -> None:
    """A manifest with a non-UTF-8 byte at start: the sidecar starts, engine/prod is
    NOT_SERVING with EngineManifestInvalid, and SIGTERM still ends it with 0."""
    cfg = _engine_config(tmp_path, b"name: prod\nfile: model.plan\nsha256: \xff\n")
    sp = sidecar_proc("--simulate", "--config", str(cfg))
    assert check(sp.addr, "startup") == SERVING
    wait_until(lambda: check(sp.addr, "engine/prod") == NOT_SERVING, timeout=10)
    status = subprocess.run(
        [sys.executable, "-m", "sidecar", "status", "--addr", sp.addr, "--json"],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=REPO,
    )
    doc = json.loads(status.stdout)
    assert "EngineManifestInvalid" in " ".join(doc["services"]["engine/prod"]["reasons"])
    assert sp.stop(signal.SIGTERM) == 0


def _catches(pid: int, sig: int) -> bool:
    """The process installed a handler for ``sig`` (SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_during_start_up_exits_0_quietly(tmp_path: Path, sig: int) -> None:
    """SIGTERM or SIGINT as soon as the process can take one (long before it is started):
    exit 0, no traceback, and it never went on to start."""
    err = tmp_path / "err.log"
    with open(err, "w") as f:
        proc = subprocess.Popen(
            sidecar_argv("--simulate", "--state-dir", str(tmp_path / "state")),
            stdout=subprocess.DEVNULL,
            stderr=f,
            cwd=REPO,
            env=dict(os.environ),
        )
    try:
        wait_until(lambda: _catches(proc.pid, signal.SIGTERM) or proc.poll() is not None, timeout=20)
        proc.send_signal(sig)
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = err.read_text()
    assert rc == 0, text
    assert "Traceback" not in text
    assert "sidecar started" not in text


def test_sigint_while_serving_exits_0_without_traceback(sidecar_proc: Any) -> None:
    """SIGINT (Ctrl-C) on a running sidecar: graceful stop, exit 0, no KeyboardInterrupt."""
    sp = sidecar_proc("--simulate")
    assert check(sp.addr, "startup") == SERVING
    assert sp.stop(signal.SIGINT) == 0
    text = sp.stderr_path.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert any(r.get("msg") == "sidecar stopped" for r in sp.log_records())


def _status(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "status", *args],
        text=True,
        timeout=30,
        cwd=REPO,
        **({"capture_output": True} | kw),
    )


def test_status_json_is_the_healthz_document(sidecar_proc: Any) -> None:
    """`status --json` prints the /healthz document: same keys, `status: "SERVING"`-style
    services, the overall service under its name ""."""
    import urllib.request

    sp = sidecar_proc("--simulate")
    wait_until(lambda: check(sp.addr, "readiness") == SERVING, timeout=20)
    with urllib.request.urlopen(f"http://127.0.0.1:{sp.http_port}/healthz", timeout=5) as r:
        healthz = json.loads(r.read())
    res = _status("--addr", sp.addr, "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert set(doc) == set(healthz) == {"service", "status", "services", "checks"}
    assert doc["service"] == healthz["service"]
    assert doc["status"] == "SERVING"
    assert doc["services"][""] == {"status": "SERVING", "reasons": []}
    assert set(doc["services"]) == set(healthz["services"])
    assert set(doc["checks"]) == set(healthz["checks"])
    for name, entry in healthz["checks"].items():
        assert set(doc["checks"][name]) == set(entry), name
        for key in ("ok", "status", "established", "gating", "severity"):
            assert doc["checks"][name][key] == entry[key], (name, key)


def test_status_into_a_closed_pipe_exits_quietly(sidecar_proc: Any) -> None:
    """`status | head` where the reader is gone: no traceback, no "internal error", exit 0."""
    sp = sidecar_proc("--simulate")
    r, w = os.pipe()
    os.close(r)  # the reader left before the first byte
    try:
        res = _status("--addr", sp.addr, stdout=w, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(w)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr
    assert res.stderr == ""


def test_unknown_flag_shows_the_subcommands_usage() -> None:
    """`serve --bogus` names the flag with serve's usage; `status --help` explains --addr."""
    res = subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", "--bogus"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("usage: trt-health-sidecar serve ")
    assert "unrecognized arguments: --bogus" in res.stderr
    helped = _status("--help")
    assert helped.returncode == 0
    addr_help = helped.stdout.split("--addr HOST:PORT", 2)[-1]
    assert "gRPC address of the sidecar" in addr_help


def _serve_on_socket(tmp_path: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sidecar_argv("--simulate", "--state-dir", str(tmp_path / "state"), "--unix-socket", str(sock)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_unix_socket_path_holding_a_regular_file_is_left_alone(tmp_path: Path) -> None:
    """--unix-socket naming a regular file: exit 3 naming the path; the file keeps its data."""
    victim = tmp_path / "important.txt"
    victim.write_text("keep me")
    res = _serve_on_socket(tmp_path, victim)
    assert res.returncode == 3, res.stderr
    assert str(victim) in res.stderr and "not a socket" in res.stderr
    assert victim.read_text() == "keep me"


def test_unix_socket_in_use_is_left_alone(tmp_path: Path) -> None:
    """--unix-socket naming a socket another process listens on: exit 3, that socket stays."""
    import socket

    path = tmp_path / "busy.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        res = _serve_on_socket(tmp_path, path)
        assert res.returncode == 3, res.stderr
        assert "another process is listening" in res.stderr
        assert path.is_socket()


def test_stale_unix_socket_is_replaced(sidecar_proc: Any, tmp_path: Path) -> None:
    """A socket left by a dead process (nobody listening) is removed and served on."""
    import socket

    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # bound, never listening, closed: connect() is refused
    sp = sidecar_proc("--simulate", "--unix-socket", str(path))
    assert check(f"unix:{path}", "startup") == SERVING
    sp.stop()


START_FAILS = """
import asyncio, sys
from sidecar import serve as appmod
from sidecar.config import load_config
from sidecar.publish.log import configure_logging

started = appmod.SidecarApp.start

async def start_then_fail(self):  # a bug after every component started
    await started(self)
    raise RuntimeError("injected start bug")

appmod.SidecarApp.start = start_then_fail
cfg = load_config(config_file=None, overrides={
    ("simulate",): True, ("grpc", "port"): 0, ("http", "port"): 0, ("state_dir",): sys.argv[1]})
configure_logging("info", "json")
sys.exit(asyncio.run(appmod.serve(cfg, {})))
"""


def test_a_start_failure_is_logged_and_exits_1_without_hanging(tmp_path: Path) -> None:
    """A bug that raises while starting (components already running): the error is logged,
    everything is stopped, the process exits 1 (it used to hang in asyncio.run's clean-up)."""
    res = subprocess.run(
        [sys.executable, "-c", START_FAILS, str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    records = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    (failed,) = [r for r in records if r["msg"] == "start failed"]
    assert "injected start bug" in failed["exc"]
    assert records[-1]["msg"] == "sidecar stopped"
