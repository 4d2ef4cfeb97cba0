"""A SIGHUP storm: reloads run one at a time and the storm collapses into one more reload."""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

from sidecar.testing import child_pids

from .conftest import SERVING, check, wait_until


def _reloads(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=3) as r:
        text = r.read().decode()
    out = {"applied": 0.0, "rejected": 0.0, "unchanged": 0.0}
    for m in re.finditer(r'^trt_health_config_reloads_total\{result="(\w+)"\} (\S+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def _sighup_pending(pid: int) -> bool:
    """SIGHUP (signal 1) still pending for the process (not yet taken by its handler)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & 1:
            return True
    return False


def test_sighup_storm_is_serialised_and_coalesced(sidecar_proc: Any, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("canary:\n  interval: 3s\n")
    sp = sidecar_proc("--simulate", "--config", str(cfg))
    wait_until(lambda: check(sp.addr, "readiness") == SERVING, timeout=20)
    wait_until(lambda: len(child_pids(sp.proc.pid)) == 1, timeout=10)  # one canary worker
    # rewrite in place with the same size: the file watcher may or may not see it
    cfg.write_text("canary:\n  interval: 4s\n")
    for _ in range(20):  # each one taken by the process before the next (none merged)
        sp.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: not _sighup_pending(sp.proc.pid), timeout=5, interval=0.001)
    # witness: the change applied, then the storm's follow-up reload found nothing new
    wait_until(lambda: _reloads(sp.http_port)["unchanged"] >= 1, timeout=20)
    wait_until(lambda: len(child_pids(sp.proc.pid)) == 1, timeout=10)
    counts = _reloads(sp.http_port)
    assert counts["applied"] == 1 and counts["rejected"] == 0, counts
    # the storm collapses: one follow-up (two if the first reload ended mid-storm), plus at
    # most the file watcher's look; never one reload per signal
    assert counts["unchanged"] <= 3, counts
    records = sp.log_records()
    assert not [r for r in records if r.get("level") in ("error", "critical")], records
    assert not any("duplicate check name" in str(r) for r in records)
    assert check(sp.addr, "readiness") == SERVING
    assert sp.stop() == 0
