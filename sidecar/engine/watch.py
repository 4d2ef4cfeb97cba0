"""Notice engine file changes: inotify on local volumes, stat polling on NFS / FUSE.

inotify watches the *folders* holding the files, so an atomic rename (``mv new plan``), an
in-place rewrite, a deletion and a Kubernetes ``..data`` symlink swap are all seen. It is
useless on network and FUSE file systems (changes made by other clients raise no event), so
``auto`` picks polling there, and falls back to polling whenever inotify cannot start.
The watcher only says "this path may have changed": the verification decides what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

from sidecar.engine.files import FileStamp, stat_stamp

log = logging.getLogger(__name__)

WATCH_MODES = ("auto", "inotify", "poll")

# File systems whose changes by other clients raise no inotify event.
_NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "ceph",
        "glusterfs",
        "lustre",
        "gpfs",
        "afs",
        "fuse",
        "fuseblk",
        "virtiofs",
        "beegfs",
        "wekafs",
    }
)

ChangeCallback = Callable[[Path], None]


def is_network_fs(fstype: str | None) -> bool:
    """True for file systems where inotify does not see other clients' writes."""
    if fstype is None:
        return False
    return fstype in _NETWORK_FS or fstype.startswith("fuse.")


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the file system holding ``path`` (longest mount point prefix), or None."""
    try:
        target = os.path.realpath(path)
        lines = mountinfo.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        if len(fields) < 5:
            continue
        mount_point = fields[4].replace("\\040", " ")
        fstype = right.split()[0] if right.split() else ""
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), fstype)
    return best[1] if best else None


class FileWatcher(Protocol):
    """Calls back with a watched path when it may have changed (from any thread)."""

    mode: str

    async def start(self, callback: ChangeCallback) -> None: ...

    async def stop(self) -> None: ...


class PollWatcher:
    """Stat every watched path each ``interval_s``; calls back when its stamp changes."""

    mode = "poll"

    def __init__(self, paths: Iterable[Path], interval_s: float) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.interval_s = interval_s
        self._stamps: dict[Path, FileStamp | None] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self, callback: ChangeCallback) -> None:
        self._stamps = {p: stat_stamp(p) for p in self.paths}
        self._task = asyncio.create_task(self._run(callback), name="engine-poll-watch")

    async def _run(self, callback: ChangeCallback) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for p in self.paths:
                # Off the event loop: a stat on a hung NFS mount blocks.
                now = await asyncio.to_thread(stat_stamp, p)
                if now != self._stamps.get(p):
                    self._stamps[p] = now
                    try:
                        callback(p)
                    except Exception:
                        log.exception("engine change callback failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class InotifyWatcher:
    """inotify on the folders of the watched paths, read on a daemon thread.

    Raises ``OSError`` from the constructor when inotify is unavailable (no kernel support,
    ``max_user_watches`` / ``max_user_instances`` exhausted, missing folder).
    """

    mode = "inotify"

    def __init__(self, paths: Iterable[Path]) -> None:
        import inotify_simple

        self._flags = inotify_simple.flags
        self.paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
        self._inotify = inotify_simple.INotify()
        mask = (
            self._flags.CLOSE_WRITE
            | self._flags.MODIFY
            | self._flags.MOVED_TO
            | self._flags.MOVED_FROM
            | self._flags.CREATE
            | self._flags.DELETE
            | self._flags.ATTRIB
            | self._flags.DELETE_SELF
            | self._flags.MOVE_SELF
        )
        self._by_wd: dict[int, Path] = {}
        self._names: dict[Path, dict[str, list[Path]]] = {}
        try:
            for p in self.paths:
                folder = p.parent
                if folder not in self._names:
                    wd = self._inotify.add_watch(str(folder), mask)
                    self._by_wd[wd] = folder
                    self._names[folder] = {}
                self._names[folder].setdefault(p.name, []).append(p)
        except OSError:
            self._inotify.close()
            raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def start(self, callback: ChangeCallback) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(callback,), name="engine-inotify", daemon=True
        )
        self._thread.start()

    def _run(self, callback: ChangeCallback) -> None:
        while not self._stop.is_set():
            try:
                events = self._inotify.read(timeout=200)
            except OSError:
                if self._stop.is_set():
                    return
                log.exception("inotify read failed; engine changes are seen by the polled check")
                return
            touched: list[Path] = []
            for ev in events:
                folder = self._by_wd.get(ev.wd)
                if folder is None:
                    continue
                names = self._names[folder]
                if ev.name in names:
                    touched.extend(names[ev.name])
                elif not ev.name or ev.name.startswith(".."):
                    # The folder itself moved, or a Kubernetes atomic-writer swap: all files.
                    for group in names.values():
                        touched.extend(group)
            for p in dict.fromkeys(touched):
                try:
                    callback(p)
                except Exception:
                    log.exception("engine change callback failed")

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
            self._thread = None
        with contextlib.suppress(OSError):
            self._inotify.close()


def choose_watcher(
    mode: str,
    paths: Iterable[Path],
    poll_interval_s: float,
    *,
    fstype: Callable[[Path], str | None] = filesystem_type,
    inotify_factory: Callable[[list[Path]], FileWatcher] = InotifyWatcher,
) -> tuple[FileWatcher, str | None]:
    """Pick the watcher for ``mode``. Returns it and a note when it is not what was asked.

    ``auto``: inotify unless any path lives on a network / FUSE file system or inotify fails.
    ``inotify``: inotify; if it cannot start, polling with a note (never blind).
    ``poll``: polling.
    """
    plist = list(paths)
    if mode == "poll":
        return PollWatcher(plist, poll_interval_s), None
    if mode == "auto":
        for p in plist:
            kind = fstype(p.parent if p.parent.exists() else p)
            if is_network_fs(kind):
                return PollWatcher(plist, poll_interval_s), (
                    f"{p.parent} is on {kind}: inotify does not see other clients' writes, polling"
                )
    try:
        return inotify_factory(plist), None
    except (OSError, ImportError) as exc:
        return PollWatcher(plist, poll_interval_s), f"inotify unavailable ({exc}), polling"
