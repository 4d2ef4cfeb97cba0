"""The soak of bench/soak.py, short: load, random faults, engine swaps, worker kills. Run as a
user runs it (`python -m bench.soak`), so the tests never import bench/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_soak_short() -> None:
    """~45 s of faults under Check / Watch load: no crash, every fault detected, probes within
    1 s, readiness SERVING at the end, fds / threads / RSS within the stated bounds (the soak
    fails itself on any of these: exit 1 and a failures list)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--seconds", "45", "--watchers", "10", "--seed", "7", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=110,
    )
    print(proc.stdout)
    summary = proc.stdout + proc.stderr[-4000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0 and res["failures"] == [], summary
    assert sum(res["faults"].values()) >= 12  # the warm-up alone injects every kind once
    assert {"fds", "threads", "rss_mb"} <= set(res["start"]) & set(res["end"])  # measured
    assert res["probes"] > 100 and res["checks"] > 1000
