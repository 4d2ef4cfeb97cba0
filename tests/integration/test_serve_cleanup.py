"""``serve`` stops the app on every way out: a bug after the start (writing the ports file)
is logged, everything is stopped, the process exits 1 without hanging."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

PORTS_FILE_FAILS = """
import asyncio, sys
from sidecar import serve as appmod
from sidecar.config import load_config
from sidecar.publish.log import configure_logging

def broken(path, app):  # a bug while writing the ports file (every component runs)
    raise RuntimeError("injected ports-file bug")

appmod.write_ports_file = broken
cfg = load_config(config_file=None, overrides={
    ("simulate",): True, ("grpc", "port"): 0, ("http", "port"): 0, ("state_dir",): sys.argv[1]})
configure_logging("info", "json")
sys.exit(asyncio.run(appmod.serve(cfg, {}, ports_file=sys.argv[2])))
"""


def test_a_ports_file_bug_stops_the_app_and_exits_1(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-c", PORTS_FILE_FAILS, str(tmp_path / "state"), str(tmp_path / "ports.json")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 1, res.stderr[-2000:]
    records = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    assert any(r["msg"] == "sidecar started" for r in records)  # witness: it got that far
    (failed,) = [r for r in records if r["msg"] == "cannot write the ports file"]
    assert "injected ports-file bug" in failed["exc"]
    assert records[-1]["msg"] == "sidecar stopped"
