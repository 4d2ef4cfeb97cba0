"""The config file is watched by the one file watcher: a change is reloaded without waiting for
the stat poll (set to an hour here), whether the file is rewritten in place or mounted from a
ConfigMap whose ``..data`` link is swapped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidecar.runtime import reload
from sidecar.testing import wait_until
from sidecar.testing.reload import reloads_rejected

from .conftest import AppThread, core_config

BAD = "policy:\n  failure_threshold: 0\n"  # rejected: a reload witness that builds nothing


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
    before = reloads_rejected(app.http_base)
    change(path)
    wait_until(lambda: reloads_rejected(app.http_base) > before, timeout=10, what="the changed file reloaded")
