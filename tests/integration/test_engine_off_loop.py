"""Every file access of the engine checks runs off the event loop's thread: manifest parsing,
stats (stability, the kept copy), the plan header, hashing and the last-good keep."""

from __future__ import annotations

import asyncio
import builtins
import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.engine.config import EngineSpec
from sidecar.testing.engine import config, is_, plan_bytes, started, write_engine


class FileAccesses:
    """Records (function, path, on the loop thread?) of each file access under ``root``."""

    def __init__(self, root: Path, loop_thread: int) -> None:
        self.root = str(root)
        self.loop_thread = loop_thread
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, bool]] = []

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(path: Any, *args: Any, **kw: Any) -> Any:
            text = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else ""
            if text.startswith(self.root):
                with self.lock:
                    self.seen.append((name, text, threading.get_ident() == self.loop_thread))
            return func(path, *args, **kw)

        return recorded

    def on_loop(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(n, p) for n, p, on in self.seen if on]

    def off_loop(self, name: str, suffix: str) -> int:
        with self.lock:
            return sum(1 for n, p, on in self.seen if not on and n == name and p.endswith(suffix))


@pytest.fixture
def accesses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FileAccesses:
    rec = FileAccesses(tmp_path, threading.get_ident())  # the test's loop runs on this thread
    monkeypatch.setattr(os, "stat", rec.wrap("stat", os.stat))
    monkeypatch.setattr(os, "lstat", rec.wrap("lstat", os.lstat))
    monkeypatch.setattr(os, "link", rec.wrap("link", os.link))
    monkeypatch.setattr(os, "open", rec.wrap("open", os.open))
    monkeypatch.setattr(io, "open", rec.wrap("open", io.open))
    monkeypatch.setattr(builtins, "open", rec.wrap("open", builtins.open))
    return rec


def _replace(folder: Path, seed: int) -> None:
    """A different engine + its manifest, renamed into place."""
    staging = folder / "staging"
    staging.mkdir(exist_ok=True)
    write_engine(staging, plan_bytes(seed))
    os.replace(staging / "model.plan", folder / "model.plan")
    os.replace(staging / "model.plan.manifest.yaml", folder / "model.plan.manifest.yaml")


def _corrupt(folder: Path) -> None:
    tmp = folder / ".model.plan.new"
    tmp.write_bytes(plan_bytes(99))
    os.replace(tmp, folder / "model.plan")


async def test_no_engine_file_access_on_the_loop(tmp_path: Path, accesses: FileAccesses) -> None:
    """Verified and kept, replaced by another that verifies (kept again), by one that fails
    (the kept copy is named), then deleted (seen by inotify): every stat, open and link under
    the folder ran on a thread."""
    engines = tmp_path / "engines"
    engines.mkdir()
    m = await asyncio.to_thread(write_engine, engines, plan_bytes(1))
    keep = tmp_path / "keep"
    comp, sink = await started(
        config(EngineSpec("prod", manifest=m), last_good_dir=keep, watch="inotify"),
        gpu_compute_capability=lambda: "9.0",
    )
    try:
        await sink.wait_for(is_("change", ok=True))
        t = time.monotonic()
        await asyncio.to_thread(_replace, engines, 2)
        await sink.wait_for(lambda r: is_("change", "EngineReplaced")(r) and "sha256" in r.labels, after=t)
        t = time.monotonic()
        await asyncio.to_thread(_corrupt, engines)
        _, ch = await sink.wait_for(
            lambda r: is_("change", "EngineReplaced")(r) and "last_good" in r.labels, after=t
        )
        assert ch.labels["last_good"] == str(keep / "prod" / "model.plan")
        t = time.monotonic()
        await asyncio.to_thread((engines / "model.plan").unlink)
        await sink.wait_for(lambda r: is_("file", "EngineMissing")(r) and "was deleted" in r.message, after=t)
    finally:
        await comp.stop()
    # witnesses: the manifest was read, the engine hashed, kept twice (a link, one stat each)
    assert accesses.off_loop("open", "engines/model.plan.manifest.yaml") >= 3
    assert accesses.off_loop("open", "engines/model.plan") >= 3
    assert accesses.off_loop("link", "engines/model.plan") == 2
    assert accesses.off_loop("stat", "keep/prod/model.plan") >= 3
    assert accesses.on_loop() == []
