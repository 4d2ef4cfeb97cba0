"""Engine files that are not what they should be: bad manifests (issue #10 item 7) and files
that are not regular files (issue #10 item 16), in the serving process's checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.core.values import CheckStatus
from sidecar.engine.config import EngineSpec
from sidecar.testing.engine import config, is_, plan_bytes, started
from tests.integration.conftest import REPO

BAD_MANIFESTS = {
    "non-utf8": b"name: prod\nfile: model.plan\nsha256: \xff\xfe\n",
    "deep-nesting": b"name: prod\nfile: model.plan\ninputs: " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
    "deep-mapping": b"name: prod\nfile: " + b"{a: " * 5_000 + b"1" + b"}" * 5_000 + b"\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
async def test_bad_manifest_at_start_is_an_engine_finding(tmp_path: Path, kind: str) -> None:
    """A manifest with a non-UTF-8 byte or deep nesting: the component starts, and the
    manifest condition fails with EngineManifestInvalid and a short message."""
    (tmp_path / "model.plan").write_bytes(plan_bytes())
    m = tmp_path / "model.plan.manifest.yaml"
    m.write_bytes(BAD_MANIFESTS[kind])
    comp, sink = await started(config(EngineSpec("prod", manifest=m)))
    try:
        _, r = await sink.wait_for(is_("manifest", "EngineManifestInvalid"))
        assert r.status is CheckStatus.FAIL
        assert len(r.message) <= 600
        assert str(m) in r.message or "manifest" in r.message
    finally:
        await comp.stop()


def _not_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Paths that exist but are no engine, with the words that must name them."""
    folder = tmp_path / "folder"
    folder.mkdir()
    fifo = tmp_path / "fifo.plan"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.plan"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling.plan"
    dangling.symlink_to(tmp_path / "nowhere")
    sock_path = tmp_path / "s.plan"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    return {
        "dev-zero": (Path("/dev/zero"), "character device"),
        "dev-null": (Path("/dev/null"), "character device"),
        "directory": (folder, "directory"),
        "fifo": (fifo, "FIFO"),
        "symlink-loop": (loop, "symlink loop"),
        "dangling-symlink": (dangling, "dangling symlink"),
        "socket": (sock_path, "socket"),
    }


KINDS = ["dev-zero", "dev-null", "directory", "fifo", "symlink-loop", "dangling-symlink", "socket"]


@pytest.mark.parametrize("kind", KINDS)
async def test_engine_path_that_is_not_a_file_is_named(tmp_path: Path, kind: str) -> None:
    """The serving process says what the engine path is (never EngineMissing for something
    that is there, never stuck in LoadingEngine on a FIFO)."""
    path, words = _not_files(tmp_path)[kind]
    comp, sink = await started(config(EngineSpec("prod", file=path)))
    try:
        _, r = await sink.wait_for(lambda r: r.name == "engine/prod/file" and r.reason != "LoadingEngine")
        assert r.status is CheckStatus.FAIL
        if kind == "dangling-symlink":
            assert r.reason == "EngineMissing"
        else:
            assert r.reason == "EngineNotAFile"
            assert words in r.message and str(path) in r.message
    finally:
        await comp.stop()


async def test_manifest_that_is_a_fifo_does_not_block(tmp_path: Path) -> None:
    """A manifest path that is a FIFO is an EngineManifestInvalid finding, not a reader stuck
    for ever (and engine/prod stuck in LoadingEngine)."""
    m = tmp_path / "model.plan.manifest.yaml"
    os.mkfifo(m)
    comp, sink = await started(config(EngineSpec("prod", manifest=m)))
    try:
        _, r = await sink.wait_for(is_("manifest", "EngineManifestInvalid"))
        assert "FIFO" in r.message
    finally:
        await comp.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_engine_inspect_names_what_the_file_is(tmp_path: Path, kind: str) -> None:
    """`engine inspect` on /dev/zero, /dev/null, a folder, a FIFO, a symlink loop...: exit 1,
    the output says what the path is, no traceback, and it returns (never blocks)."""
    path, words = _not_files(tmp_path)[kind]
    res = subprocess.run(
        [sys.executable, "-m", "sidecar", "engine", "inspect", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert words in res.stdout
    if kind != "dangling-symlink":
        assert "EngineNotAFile" in res.stdout
        assert "does not exist" not in res.stdout


def test_engine_inspect_manifest_flag_that_is_a_fifo_is_a_usage_error(tmp_path: Path) -> None:
    """--manifest naming a FIFO: exit 2 naming the flag and the kind, without blocking."""
    (tmp_path / "model.plan").write_bytes(plan_bytes())
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidecar",
            "engine",
            "inspect",
            str(tmp_path / "model.plan"),
            "--manifest",
            str(fifo),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 2
    assert "--manifest" in res.stderr and "FIFO" in res.stderr


def test_engine_manifest_of_a_directory_says_what_it_is(tmp_path: Path) -> None:
    """`engine manifest FOLDER`: exit 2 saying it is a directory (not "does not exist")."""
    res = subprocess.run(
        [sys.executable, "-m", "sidecar", "engine", "manifest", str(tmp_path), "--name", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 2
    assert "is a directory" in res.stderr and "does not exist" not in res.stderr
