"""The one file watcher (sidecar.runtime.watch) with real files: every way a file changes on a
volume is seen, by inotify and by the stat poll, and an event storm stays bounded."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.runtime.inotify import watching_folders
from sidecar.runtime.watch import (
    FileChanges,
    FileWatcher,
    InotifyWatcher,
    PollWatcher,
    Stamps,
    choose_watcher,
)
from sidecar.testing import await_until

POLL_S = 0.02


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def in_place(d: Path) -> Path:
    f = d / "conf.yaml"
    _write(f, "a: 1\n")
    return f


def _rewrite(f: Path) -> None:
    _write(f, "a: 2\n")


def _rename(f: Path) -> None:
    tmp = f.with_suffix(".tmp")
    _write(tmp, "a: 22\n")
    tmp.replace(f)


def _delete(f: Path) -> None:
    f.unlink()


def configmap(d: Path) -> Path:
    """A Kubernetes ConfigMap / Secret volume: conf.yaml -> ..data/conf.yaml, ..data -> ..v1."""
    (d / "..v1").mkdir()
    _write(d / "..v1" / "conf.yaml", "a: 1\n")
    (d / "..data").symlink_to("..v1")
    (d / "conf.yaml").symlink_to("..data/conf.yaml")
    return d / "conf.yaml"


def _swap(f: Path) -> None:
    """The kubelet's atomic writer: a new ..v2, a ..data_tmp link renamed over ..data."""
    d = f.parent
    (d / "..v2").mkdir()
    _write(d / "..v2" / "conf.yaml", "a: 2\n")
    (d / "..data_tmp").symlink_to("..v2")
    (d / "..data_tmp").replace(d / "..data")
    shutil.rmtree(d / "..v1")


def missing_folder(d: Path) -> Path:
    return d / "not" / "yet" / "conf.yaml"


def _create_folder(f: Path) -> None:
    f.parent.mkdir(parents=True)
    _write(f, "a: 1\n")


def _recreate_folder(f: Path) -> None:
    shutil.rmtree(f.parent)
    f.parent.mkdir()
    _write(f, "a: 3\n")


def in_subfolder(d: Path) -> Path:
    (d / "sub").mkdir()
    f = d / "sub" / "conf.yaml"
    _write(f, "a: 1\n")
    return f


CASES: dict[str, tuple[Callable[[Path], Path], Callable[[Path], None]]] = {
    "in-place write": (in_place, _rewrite),
    "atomic rename": (in_place, _rename),
    "deletion": (in_place, _delete),
    "configmap ..data swap": (configmap, _swap),
    "folder created later": (missing_folder, _create_folder),
    "folder deleted and made again": (in_subfolder, _recreate_folder),
}


def make_watcher(mode: str, paths: list[Path]) -> FileWatcher:
    return InotifyWatcher(paths) if mode == "inotify" else PollWatcher(paths, POLL_S)


@pytest.fixture
async def seen() -> AsyncIterator[list[Path]]:
    got: list[Path] = []
    yield got
    await await_until(lambda: watching_folders() == 0, timeout=5.0, what="the inotify hub closed")


@pytest.mark.parametrize("mode", ["inotify", "poll"])
@pytest.mark.parametrize("case", list(CASES))
async def test_every_kind_of_change_is_seen(tmp_path: Path, mode: str, case: str, seen: list[Path]) -> None:
    """Each way a file changes on a volume calls back with the watched path (and only it)."""
    setup, change = CASES[case]
    path = setup(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    other = tmp_path / "elsewhere" / "other.yaml"  # a ..data swap changes all of its folder
    watcher = make_watcher(mode, [path, other])
    await watcher.start(seen.append)
    try:
        change(path)
        await await_until(lambda: path in seen, timeout=5.0, what=f"{case} seen")
        assert set(seen) == {path}
    finally:
        await watcher.stop()


@pytest.mark.parametrize("mode", ["inotify", "poll"])
async def test_change_after_folder_created_later_is_seen_too(
    tmp_path: Path, mode: str, seen: list[Path]
) -> None:
    """Once a missing folder appeared, later writes into it are still seen (inotify re-armed)."""
    path = missing_folder(tmp_path)
    watcher = make_watcher(mode, [path])
    await watcher.start(seen.append)
    try:
        _create_folder(path)
        await await_until(lambda: path in seen, timeout=5.0, what="creation seen")
        seen.clear()
        _rename(path)
        await await_until(lambda: path in seen, timeout=5.0, what="the later rename seen")
    finally:
        await watcher.stop()


async def test_watchers_share_one_descriptor_and_it_closes(tmp_path: Path, seen: list[Path]) -> None:
    """Two watchers of the same folder share the process's inotify hub; the last stop closes it."""
    a, b = tmp_path / "a", tmp_path / "b"
    one, two = InotifyWatcher([a]), InotifyWatcher([b])
    assert watching_folders() == 1
    await one.start(seen.append)
    await two.start(seen.append)
    _write(b, "x")
    await await_until(lambda: b in seen, timeout=5.0)
    assert a not in seen
    await one.stop()
    assert watching_folders() == 1
    seen.clear()
    _write(b, "y")
    await await_until(lambda: b in seen, timeout=5.0, what="the remaining watcher still served")
    await two.stop()
    assert watching_folders() == 0


class CountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the callbacks other threads hand it."""

    handed = 0

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> asyncio.Handle:
        self.handed += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def test_event_storm_while_the_loop_is_busy_is_one_delivery(tmp_path: Path) -> None:
    """20,000 writes while the loop cannot run: the reader thread hands the loop one delivery
    (not one per read), the watcher calls back a few times at most, and a change after the
    storm is still delivered."""
    path, marker = tmp_path / "storm", tmp_path / "marker"
    _write(path, "0")
    seen: list[Path] = []
    loop = CountingLoop()

    async def storm() -> int:
        watcher = InotifyWatcher([path, marker])
        await watcher.start(seen.append)
        try:
            with path.open("w", encoding="utf-8") as fh:
                for i in range(20_000):  # the loop is blocked here: nothing is delivered meanwhile
                    fh.write(str(i))
                    fh.flush()
            _write(marker, "after the storm")  # queued behind every event of the storm
            await await_until(lambda: marker in seen, timeout=10.0, what="the marker delivered")
            return loop.handed
        finally:
            await watcher.stop()

    try:
        handed = loop.run_until_complete(storm())
    finally:
        loop.close()
    assert 1 <= seen.count(path) <= 4, f"{seen.count(path)} callbacks for one storm"
    assert handed <= 4, f"{handed} deliveries handed to the loop for one storm"
    assert watching_folders() == 0


def _settle(f: Path) -> None:
    """Give ``f`` an mtime well in the past (as a file written a while ago has)."""
    old = f.stat().st_mtime_ns - 60 * 10**9
    os.utime(f, ns=(old, old))


def test_stamps_say_changed_once_per_change(tmp_path: Path) -> None:
    """The pull side: creation, rewrite and deletion of a settled file each answer True once."""
    f = tmp_path / "cert.pem"
    stamps = Stamps([f])
    assert not stamps.changed()
    _write(f, "1")
    _settle(f)
    assert stamps.changed() and not stamps.changed()
    _write(f, "2")
    _settle(f)
    assert stamps.changed() and not stamps.changed()
    f.unlink()
    assert stamps.changed() and not stamps.changed()


def test_stamps_distrust_a_file_written_just_now(tmp_path: Path) -> None:
    """A file modified within the timestamp granularity of its stamp may change again without
    its stamp changing: until it settles, every question answers True (the caller compares
    content), then an equal stamp is trusted."""
    f = tmp_path / "cert.pem"
    _write(f, "1")
    stamps = Stamps([f])
    assert stamps.changed() and stamps.changed()
    _settle(f)
    assert stamps.changed()  # the utime itself
    assert not stamps.changed()


def test_choose_watcher_auto_polls_for_a_missing_folder_on_nfs(tmp_path: Path) -> None:
    """auto asks the file system of the nearest existing folder when the folder is missing."""
    asked: list[Path] = []

    def fstype(p: Path) -> str:
        asked.append(p)
        return "nfs4"

    watcher, note = choose_watcher("auto", [tmp_path / "no" / "such" / "f"], 1.0, fstype=fstype)
    assert isinstance(watcher, PollWatcher) and note is not None and "nfs4" in note
    assert asked == [tmp_path]


async def test_file_changes_debounce_collapses_a_burst(tmp_path: Path) -> None:
    """With a debounce, a burst of writes is one run; a later change is one more."""
    path = tmp_path / "config.yaml"
    _write(path, "0")
    runs: list[str] = []

    async def reload() -> None:
        runs.append(path.read_text(encoding="utf-8"))

    changes = FileChanges([path], reload, name="test", backup_poll_s=60.0, debounce_s=0.2)
    await changes.start()
    try:
        assert changes.mode == "inotify"
        for i in range(1, 6):
            _write(path, str(i))
        await await_until(lambda: runs, timeout=5.0, what="the burst's run")
        assert runs == ["5"]
        _write(path, "6")
        await await_until(lambda: len(runs) == 2, timeout=5.0, what="the next change's run")
        assert runs == ["5", "6"]
    finally:
        await changes.stop()


async def test_file_changes_one_run_at_a_time(tmp_path: Path) -> None:
    """Changes that arrive while a run is under way collapse into one more run, never two at once."""
    path = tmp_path / "scenario.yaml"
    _write(path, "0")
    gate = asyncio.Event()
    running = 0
    runs = 0
    most = 0

    async def reload() -> None:
        nonlocal running, runs, most
        running += 1
        most = max(most, running)
        await gate.wait()
        runs += 1
        running -= 1

    changes = FileChanges([path], reload, name="test", backup_poll_s=60.0)
    await changes.start()
    try:
        _write(path, "1")
        await await_until(lambda: running == 1, timeout=5.0, what="the first run started")
        for i in range(2, 20):
            _write(path, str(i))
        gate.set()
        await await_until(lambda: runs >= 2, timeout=5.0, what="one more run after the first")
        assert most == 1
    finally:
        await changes.stop()


async def test_folders_made_and_deleted_over_and_over_are_followed(tmp_path: Path, seen: list[Path]) -> None:
    """``mkdir -p`` / write / ``rm -r`` of the file's folders, 40 times with no pause: each new
    file is seen (a folder deleted or created while the watches are re-armed is looked at again)."""
    path = tmp_path / "later" / "deeper" / "conf.yaml"
    watcher = InotifyWatcher([path])
    await watcher.start(seen.append)
    try:
        for i in range(40):
            seen.clear()
            path.parent.mkdir(parents=True)
            _write(path, str(i))
            await await_until(lambda: path in seen, timeout=5.0, what=f"round {i} seen")
            shutil.rmtree(tmp_path / "later")
    finally:
        await watcher.stop()


@pytest.mark.parametrize("mode", ["auto", "inotify", "poll"])
async def test_file_changes_start_stats_nothing_on_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Starting a watch stats the file's folders (a hung NFS mount blocks a stat): never on
    the event loop's thread."""
    path = tmp_path / "missing" / "conf.yaml"
    loop_thread = threading.get_ident()
    on_loop: list[str] = []
    real_stat = os.stat

    def recording_stat(p: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if str(p).startswith(str(tmp_path)) and threading.get_ident() == loop_thread:
            on_loop.append(str(p))
        return real_stat(p, *args, **kwargs)

    async def nothing() -> None:
        return None

    changes = FileChanges([path], nothing, name="test", mode=mode)
    monkeypatch.setattr(os, "stat", recording_stat)
    try:
        await changes.start()
    finally:
        monkeypatch.undo()
        await changes.stop()
    assert on_loop == []


async def test_file_changes_catch_up_once_armed(tmp_path: Path) -> None:
    """A change made before inotify was armed (no event for it) is caught up by one run as
    soon as the watch is armed, without waiting for the backup poll."""
    path = tmp_path / "config.yaml"
    _write(path, "0")
    runs: list[str] = []

    async def reload() -> None:
        runs.append(path.read_text(encoding="utf-8"))

    changes = FileChanges([path], reload, name="test", backup_poll_s=3600.0)
    await changes.start()
    try:
        await await_until(lambda: runs, timeout=5.0, what="the catch-up run")
        assert runs == ["0"]
    finally:
        await changes.stop()


async def test_file_changes_stop_ends_while_changes_keep_coming(tmp_path: Path) -> None:
    """stop() ends the watch even when a change arrives at the moment it cancels (each run
    rewrites the file, so a change is always pending; Python 3.11's wait_for lost the cancel)."""
    path = tmp_path / "busy.yaml"
    _write(path, "0")
    for round_ in range(20):
        runs: list[int] = []

        async def rewrite_it(runs: list[int] = runs) -> None:
            runs.append(len(runs))
            _write(path, str(len(runs)))

        changes = FileChanges([path], rewrite_it, name="test", backup_poll_s=60.0)
        await changes.start()
        await await_until(lambda r=runs: len(r) >= 3, timeout=5.0, what=f"round {round_}: changes coming")
        async with asyncio.timeout(5.0):
            await changes.stop()
