"""Replica consistency with real processes: two sidecars running the same canary on the same
(simulated) GPU model export the same output digest under the same key, one series each."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from sidecar.testing import SidecarProcess, closed_port, wait_until
from tests.integration.conftest import SERVING, check

SERIES = re.compile(r"^trt_health_canary_digest_info\{(?P<labels>[^}]*)\} 1\.0$", re.M)


def digest_series(sp: SidecarProcess) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"{sp.http_base}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [dict(re.findall(r'(\w+)="([^"]*)"', m["labels"])) for m in SERIES.finditer(text)]


def test_two_replicas_agree_on_the_digest_and_its_key(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    replicas = []
    for i in range(2):
        d = tmp_path / f"r{i}"
        d.mkdir()
        scenario = d / "scenario.yaml"
        scenario.write_text(yaml.safe_dump({"gpus": [{}], "canary": {"mode": "ok"}}))
        replicas.append(sidecar_proc("--simulate", "--scenario", str(scenario), "--state-dir", str(d)))
    series = []
    for sp in replicas:
        wait_until(lambda sp=sp: check(sp.addr, "readiness") == SERVING, timeout=30)
        (one,) = wait_until(lambda sp=sp: digest_series(sp) or None, timeout=30)
        series.append(one)
    a, b = series
    assert a == b, (a, b)
    assert re.fullmatch(r"[0-9a-f]{16}", a["digest"])
    assert a["runner"] == "onnxruntime" and a["gpu_model"] and a["driver_version"]
    assert a["engine_sha256"] and re.fullmatch(r"[0-9a-f]{16}", a["input_sha256"])


def test_peers_command_tells_an_outlier_from_a_consistent_fleet(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    """`peers` asks each sidecar's Diagnostics RPC. Replica 3 flips the lowest bit of its
    canary output (`drift`: within the golden's tolerance, so its own canary passes): from
    its view it is an outlier (exit 4); from a healthy replica's view the fleet is consistent
    (exit 0); an unreachable peer is listed and not counted."""
    replicas = []
    for i in range(4):
        d = tmp_path / f"r{i}"
        d.mkdir()
        scenario = d / "scenario.yaml"
        mode = "drift" if i == 3 else "ok"
        scenario.write_text(yaml.safe_dump({"gpus": [{}], "canary": {"mode": mode}}))
        replicas.append(sidecar_proc("--simulate", "--scenario", str(scenario), "--state-dir", str(d)))
    digests = [
        wait_until(lambda sp=sp: digest_series(sp) or None, timeout=30)[0]["digest"] for sp in replicas
    ]
    assert digests[0] == digests[1] == digests[2] != digests[3]
    assert check(replicas[3].addr, "readiness") == SERVING  # its own canary cannot see it
    addrs = [sp.addr for sp in replicas]

    def peers(own: str, *others: str) -> tuple[int, dict[str, object]]:
        proc = subprocess.run(
            [sys.executable, "-m", "sidecar", "peers", "--json", "--addr", own, *others],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return proc.returncode, json.loads(proc.stdout) if proc.stdout else {"stderr": proc.stderr}

    with closed_port() as dead:
        code, doc = peers(addrs[0], *addrs[1:], f"127.0.0.1:{dead}")
    assert code == 0, doc
    assert (doc["comparable"], doc["agreeing"], doc["outlier"]) == (3, 2, False)
    assert isinstance(doc["skipped"], list) and len(doc["skipped"]) == 1
    code, doc = peers(addrs[3], *addrs[:3])
    assert code == 4, doc
    assert (doc["comparable"], doc["agreeing"], doc["outlier"]) == (3, 0, True)
    assert doc["majority_digest"] == digests[0]
