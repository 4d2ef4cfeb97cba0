"""The one file watcher: notice that a file may have changed, on local volumes and on NFS / FUSE.

Two ways in, one module:

- push: :func:`choose_watcher` gives a :class:`FileWatcher` for ``watch: auto | inotify | poll``
  (inotify through the process's one descriptor, :mod:`sidecar.runtime.inotify`; a stat poll
  where inotify cannot see changes, i.e. network and FUSE file systems, or cannot start).
  :class:`FileChanges` wraps it for a user that re-reads one file: the change wakes its reload
  at once (after an optional debounce), a slow stat poll backs inotify up, reloads run one at a
  time and changes that arrive meanwhile collapse into one more.
- pull: :class:`Stamps` answers "did any of these files change since I last asked" with one
  ``stat`` each (for a reader that is asked anyway, e.g. the TLS handshake fetcher).

A watcher only says "this path may have changed"; its user decides what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal, Protocol

from sidecar.runtime.inotify import ChangeCallback, InotifyWatcher

log = logging.getLogger(__name__)

__all__ = [
    "WATCH_MODES",
    "ChangeCallback",
    "FileChanges",
    "FileWatcher",
    "InotifyWatcher",
    "PollWatcher",
    "Stamp",
    "Stamps",
    "WatchMode",
    "choose_watcher",
    "filesystem_type",
    "is_network_fs",
    "stamp",
]

WatchMode = Literal["auto", "inotify", "poll"]
WATCH_MODES: tuple[WatchMode, ...] = ("auto", "inotify", "poll")

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

Stamp = tuple[int, int, int, int, int]


def stamp(path: Path | str) -> Stamp | None:
    """(size, mtime_ns, ctime_ns, inode, device) of what ``path`` points to, None when absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


# A file modified this close to the moment its stamp was taken may change again within the
# file system's timestamp granularity (a kernel tick; 2 s on FAT) without its stamp changing.
_RACY_NS = 2_000_000_000


class Stamps:
    """Pull-mode change detection for a fixed set of files (one ``stat`` each per question).

    Exact, as git's index is: while a file's mtime is within ``2 s`` of the moment its stamp
    was taken ("racily clean"), an equal stamp proves nothing and :meth:`changed` says True,
    so the caller compares content; afterwards an equal stamp means an unchanged file."""

    def __init__(self, paths: Iterable[Path | str]) -> None:
        self.paths = [str(p) for p in dict.fromkeys(paths)]
        self._last: tuple[Stamp | None, ...] = ()
        self._racy = True
        self.mark()

    def now(self) -> tuple[Stamp | None, ...]:
        return tuple(stamp(p) for p in self.paths)

    def changed(self) -> bool:
        """True once per change of any of the files (creation and deletion included), and
        while an unchanged stamp cannot be trusted yet (see the class)."""
        racy = self._racy
        return self._record() or racy

    def mark(self) -> None:
        """Take the files as they are now as seen (before a read of them)."""
        self._record()

    def _record(self) -> bool:
        taken = time.time_ns()
        current = self.now()
        self._racy = any(s is not None and s[1] >= taken - _RACY_NS for s in current)
        if current == self._last:
            return False
        self._last = current
        return True


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


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the file system a missing folder will be on)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class FileWatcher(Protocol):
    """Calls back with a watched path when it may have changed (on the event loop)."""

    mode: str

    async def start(self, callback: ChangeCallback) -> None: ...

    async def stop(self) -> None: ...


class PollWatcher:
    """Stat every watched path each ``interval_s`` (on a thread: a hung NFS mount blocks a
    ``stat``); calls back on the loop when a path's stamp changes."""

    mode = "poll"

    def __init__(self, paths: Iterable[Path], interval_s: float) -> None:
        self.paths = list(dict.fromkeys(paths))
        self.interval_s = interval_s
        self._stamps: list[Stamp | None] = []
        self._task: asyncio.Task[None] | None = None

    def _stat_all(self) -> list[Stamp | None]:
        return [stamp(p) for p in self.paths]

    async def start(self, callback: ChangeCallback) -> None:
        self._stamps = await asyncio.to_thread(self._stat_all)
        self._task = asyncio.create_task(self._run(callback), name="poll-watch")

    async def _run(self, callback: ChangeCallback) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            now = await asyncio.to_thread(self._stat_all)
            changed = [p for p, was, got in zip(self.paths, self._stamps, now, strict=True) if was != got]
            self._stamps = now
            for p in changed:
                try:
                    callback(p)
                except Exception:
                    log.exception("file change callback failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def choose_watcher(
    mode: str,
    paths: Iterable[Path],
    poll_interval_s: float,
    *,
    fstype: Callable[[Path], str | None] = filesystem_type,
    inotify_factory: Callable[[list[Path]], FileWatcher] | None = None,
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
            kind = fstype(_existing(p.parent))
            if is_network_fs(kind):
                return PollWatcher(plist, poll_interval_s), (
                    f"{p.parent} is on {kind}: inotify does not see other clients' writes, polling"
                )
    factory = inotify_factory if inotify_factory is not None else InotifyWatcher
    try:
        return factory(plist), None
    except (OSError, ImportError) as exc:
        return PollWatcher(plist, poll_interval_s), f"inotify unavailable ({exc}), polling"


class FileChanges:
    """Runs ``on_change`` when ``paths`` may have changed, one run at a time.

    With inotify a change wakes it at once (after ``debounce_s`` of quiet, at most
    ``4 * debounce_s`` late in a storm) and a stat poll every ``backup_poll_s`` backs it up;
    without, the poll runs every ``poll_interval_s``. ``on_change`` is also run on every poll
    tick where the path is polled: it compares what it read itself (and must not raise: an
    error is logged and watching goes on). Changes during a run collapse into one more run.
    Once inotify is armed, one run catches up with what changed before (while arming).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        on_change: Callable[[], Awaitable[object]],
        *,
        name: str,
        mode: str = "auto",
        poll_interval_s: float = 1.0,
        backup_poll_s: float = 1.0,
        debounce_s: float = 0.0,
    ) -> None:
        self.paths = list(paths)
        self.name = name
        self._on_change = on_change
        self._mode = mode
        self.poll_interval_s = poll_interval_s
        self.backup_poll_s = backup_poll_s
        self.debounce_s = debounce_s
        self.mode = "poll"
        self.note: str | None = None
        self._watcher: FileWatcher | None = None
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        interval = self.poll_interval_s
        # off the loop: the mount table is read and the folders are stat-ed (a hung NFS mount)
        watcher, self.note = await asyncio.to_thread(
            choose_watcher, self._mode, self.paths, self.poll_interval_s
        )
        if isinstance(watcher, PollWatcher):
            if self.note:
                log.info("%s: %s", self.name, self.note)
        else:
            await watcher.start(self._changed)
            self._watcher = watcher
            self.mode = watcher.mode
            interval = max(interval, self.backup_poll_s)
            self._kick.set()  # one run catches up with a change made while the watch was armed
        self._task = asyncio.create_task(self._run(interval), name=f"{self.name}-watch")

    def _changed(self, _path: Path) -> None:
        self._kick.set()

    async def _kicked_within(self, seconds: float) -> bool:
        """Wait for a change at most ``seconds``. ``asyncio.timeout``, not ``wait_for``:
        Python 3.11's ``wait_for`` swallows a cancel that meets a set event (stop hung)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._kick.wait()
        return self._kick.is_set()

    async def _run(self, interval: float) -> None:
        while not self._stopping:
            kicked = await self._kicked_within(interval)
            if kicked and self.debounce_s > 0:
                await self._quiet()
            self._kick.clear()
            try:
                await self._on_change()
            except Exception:  # the watcher must outlive any reload bug
                log.exception("%s: reload after a file change failed", self.name)

    async def _quiet(self) -> None:
        """Wait until no change came for ``debounce_s`` (bounded: a storm never starves)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 4 * self.debounce_s
        while loop.time() < give_up:
            self._kick.clear()
            if not await self._kicked_within(min(self.debounce_s, give_up - loop.time())):
                return

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
