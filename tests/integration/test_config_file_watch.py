"""The config file is watched by the one file watcher: a change is reloaded without waiting for
the stat poll (set to an hour here), whether the file is rewritten in place or mounted from a
ConfigMap whose ``..data`` link is swapped."""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sidecar.runtime import reload
from sidecar.testing import wait_until

from .conftest import AppThread, core_config

REJECTED = 'trt_health_config_reloads_total{result="rejected"}'
BAD = "policy:\n  failure_threshold: 0\n"  # rejected: a reload witness that builds nothing


def rejected_count(app: AppThread) -> float:
    with urllib.request.urlopen(f"{app.http_base}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(REJECTED + " "):
            return float(line.split()[-1])
    return 0.0


def plain(d: Path) -> Path:
    f = d / "config.yaml"
    f.write_text("{}\n", encoding="utf-8")
    return f


def configmap(d: Path) -> Path:
    (d / "..v1").mkdir()
    (d / "..v1" / "config.yaml").write_text("{}\n", encoding="utf-8")
    (d / "..data").symlink_to("..v1")
    (d / "config.yaml").symlink_to("..data/config.yaml")
    return d / "config.yaml"


def rewrite(f: Path) -> None:
    f.write_text(BAD, encoding="utf-8")


def swap(f: Path) -> None:
    d = f.parent
    (d / "..v2").mkdir()
    (d / "..v2" / "config.yaml").write_text(BAD, encoding="utf-8")
    (d / "..data_tmp").symlink_to("..v2")
    (d / "..data_tmp").replace(d / "..data")


@pytest.mark.parametrize(
    ("setup", "change"), [(plain, rewrite), (configmap, swap)], ids=["in-place", "configmap"]
)
def test_config_file_change_is_reloaded_by_inotify(
    make_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Any, change: Any
) -> None:
    """The changed file is read again at once (a rejected reload is the witness)."""
    monkeypatch.setattr(reload, "CONFIG_POLL_S", 3600.0)
    path = setup(tmp_path)
    app: AppThread = make_app(core_config(config_file=str(path)))
    before = rejected_count(app)
    change(path)
    wait_until(lambda: rejected_count(app) > before, timeout=10, what="the changed file reloaded")
