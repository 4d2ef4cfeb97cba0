"""Replica consistency with real processes: two sidecars running the same canary on the same
(simulated) GPU model export the same output digest under the same key, one series each."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

import yaml

from sidecar.testing import SidecarProcess, wait_until
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
