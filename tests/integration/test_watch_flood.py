"""Issue #9 item 2: thousands of Watch calls at once on one connection (past the cap of 1,000)
must not fail kubelet-style probes on fresh connections running throughout."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sidecar.testing.hostile import Prober, metric

from .conftest import REPO, SidecarProcess, wait_until

CAP = 1000
BURST = 10_000
PROBERS = 3  # 30 probes a second: several land inside the burst


def test_watch_burst_on_one_connection_fails_no_probe(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"grpc:\n  max_watchers: {CAP}\n")
    sp = sidecar_proc("--simulate", "--config", str(cfg))
    flood: subprocess.Popen[str] | None = None
    probers = [Prober(sp.addr) for _ in range(PROBERS)]
    with contextlib.ExitStack() as stack:
        for p in probers:
            stack.enter_context(p)
        try:
            wait_until(lambda: all(len(p.results) >= 5 for p in probers), timeout=20)  # before the burst
            flood = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    "watch",
                    f"-addr={sp.addr}",
                    f"-streams={BURST}",
                    "-conns=1",
                    "-ramp=0",
                    "-hold=120s",
                    "-service=readiness",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=dict(os.environ, PYTHONPATH=str(REPO)),
            )
            assert flood.stdout is not None
            opened = json.loads(flood.stdout.readline() or "{}")
            assert opened.get("opened") == CAP, opened
            assert opened.get("refused", 0) >= 1, opened  # witness: past the cap, refused
            assert metric(sp.http_port, "trt_health_watch_streams") == CAP
            probed = len(probers[0].results)
            wait_until(lambda: len(probers[0].results) >= probed + 10, timeout=30)
        finally:
            if flood is not None:
                flood.terminate()
                flood.wait(15)
    failures = [why for p in probers for _, why in p.results if why]
    assert not failures, failures[:5]
    assert sp.proc.poll() is None
