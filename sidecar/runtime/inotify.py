"""inotify for the whole process: one descriptor, one reader thread, subscribers per path.

Folders are watched, never files, so an in-place write, an atomic rename (``mv new plan``), a
deletion and a Kubernetes ConfigMap / Secret ``..data`` symlink swap are all seen. A path whose
folder does not exist yet is watched through its nearest existing ancestor and re-armed when
the folder appears (also after a watched folder is deleted or moved away).

The reader thread blocks in ``select`` with no timeout (no idle wake-ups) and hands each
:class:`InotifyWatcher` the set of its paths that may have changed; the watcher calls back on
the event loop with at most one delivery pending. Nothing an event storm sends grows memory:
the kernel queue is bounded (an overflow counts as "every path may have changed"), one read is
bounded by it, and a watcher's pending set is a subset of its own paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ChangeCallback = Callable[[Path], None]

# inotify(7) bits (stable kernel ABI; inotify_simple.flags has the same values).
_MODIFY, _ATTRIB, _CLOSE_WRITE = 0x2, 0x4, 0x8
_MOVED_FROM, _MOVED_TO, _CREATE, _DELETE = 0x40, 0x80, 0x100, 0x200
_DELETE_SELF, _MOVE_SELF = 0x400, 0x800
_Q_OVERFLOW, _IGNORED = 0x4000, 0x8000
_MASK = (
    _MODIFY | _ATTRIB | _CLOSE_WRITE | _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE | _DELETE_SELF | _MOVE_SELF
)
_GONE = _DELETE_SELF | _MOVE_SELF | _IGNORED  # the watched folder itself went away


def _armed_folder(path: Path) -> tuple[Path, str, bool]:
    """The folder to watch for ``path``: (folder, name of the entry below it, is_parent).
    The nearest existing ancestor when the parent does not exist yet."""
    child = path
    folder = path.parent
    while not folder.is_dir() and folder != folder.parent:
        child, folder = folder, folder.parent
    return folder, child.name, folder == path.parent


class _Hub:
    """The process's one inotify descriptor and its reader thread."""

    def __init__(self) -> None:
        import inotify_simple  # OSError here when inotify is unavailable

        self._ino = inotify_simple.INotify()
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._watchers: list[InotifyWatcher] = []
        self._wds: dict[Path, int] = {}
        self._folders: dict[int, Path] = {}
        # folder -> entry name -> [(watcher, path, is_parent)]
        self._index: dict[Path, dict[str, list[tuple[InotifyWatcher, Path, bool]]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inotify", daemon=True)
        self._thread.start()

    def add(self, watcher: InotifyWatcher) -> None:
        with self._lock:
            self._watchers.append(watcher)
            try:
                self._rebuild()
            except OSError:
                self._watchers.remove(watcher)
                self._rebuild_quietly()
                raise

    def remove(self, watcher: InotifyWatcher) -> bool:
        """Drop ``watcher``; True when the hub has no watcher left (the caller closes it)."""
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)
            self._rebuild_quietly()
            return not self._watchers

    def _rebuild_quietly(self) -> None:
        try:
            self._rebuild()
        except OSError:
            log.exception("inotify: re-arming the watches failed")

    def _rebuild(self) -> None:
        """Watch exactly the folders the watchers' paths need now (held under the lock).

        Folders come and go while this runs: a folder deleted before its watch is added, or a
        missing one created after it was found missing (its creation event then went to no
        watch), makes it look again, until what it watches is what exists."""
        for _ in range(64):
            index: dict[Path, dict[str, list[tuple[InotifyWatcher, Path, bool]]]] = {}
            for w in self._watchers:
                for p in w.paths:
                    folder, name, is_parent = _armed_folder(p)
                    index.setdefault(folder, {}).setdefault(name, []).append((w, p, is_parent))
            for folder in list(self._wds):
                if folder not in index:
                    wd = self._wds.pop(folder)
                    self._folders.pop(wd, None)
                    with contextlib.suppress(OSError):
                        self._ino.rm_watch(wd)
            self._index = index
            try:
                for folder in index:
                    if folder not in self._wds:
                        wd = self._ino.add_watch(str(folder), _MASK)  # ENOSPC: max_user_watches
                        self._wds[folder] = wd
                        self._folders[wd] = folder
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted meanwhile: watch its ancestor instead
            if not any(
                (folder / name).is_dir()
                for folder, names in index.items()
                for name, entries in names.items()
                if not entries[0][2]
            ):
                return
        log.warning("inotify: folders keep changing while being watched; the stat poll backs up")

    def _run(self) -> None:
        fd = self._ino.fileno()
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([fd, self._wake_r], [], [])
                if fd not in ready:
                    continue
                events = self._ino.read(timeout=0)
            except (OSError, ValueError):
                if not self._stop.is_set():
                    log.exception("inotify read failed; changes are seen by the stat poll only")
                return
            try:
                self._dispatch(events)
            except Exception:  # the reader must outlive any surprise
                log.exception("inotify dispatch failed")

    def _dispatch(self, events: Iterable[Any]) -> None:
        touched: dict[InotifyWatcher, set[Path]] = {}

        def touch(entries: Iterable[tuple[InotifyWatcher, Path, bool]]) -> None:
            for w, p, _ in entries:
                touched.setdefault(w, set()).add(p)

        with self._lock:
            rearm = False
            for ev in events:
                if ev.mask & _Q_OVERFLOW:  # events were lost: anything may have changed
                    rearm = True
                    for names in self._index.values():
                        for entries in names.values():
                            touch(entries)
                    continue
                folder = self._folders.get(ev.wd)
                if folder is None:
                    continue
                names = self._index.get(folder, {})
                if ev.mask & _GONE:
                    rearm = True
                    if ev.mask & _IGNORED:  # the kernel dropped this watch
                        self._folders.pop(ev.wd, None)
                        self._wds.pop(folder, None)
                    for entries in names.values():
                        touch(entries)
                elif ev.name in names:
                    entries = names[ev.name]
                    touch(entries)
                    rearm = rearm or not all(is_parent for _, _, is_parent in entries)
                elif ev.name.startswith(".."):
                    # A Kubernetes atomic-writer swap (``..data`` -> a new ``..<timestamp>``)
                    # changes every file of the folder at once.
                    for n, entries in names.items():
                        if not n.startswith(".."):
                            touch(entries)
            if rearm:
                self._rebuild_quietly()
        for w, paths in touched.items():
            w.notify(paths)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if threading.current_thread() is not self._thread:
            self._thread.join(2.0)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            self._ino.close()


_hub: _Hub | None = None
_hub_lock = threading.Lock()


def _join(watcher: InotifyWatcher) -> _Hub:
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = _Hub()
        hub = _hub
        try:
            hub.add(watcher)
        except OSError:
            if hub.remove(watcher):
                _hub = None
                hub.close()
            raise
        return hub


def _leave(watcher: InotifyWatcher, hub: _Hub) -> None:
    global _hub
    with _hub_lock:
        if hub.remove(watcher) and _hub is hub:
            _hub = None
            hub.close()


def watching_folders() -> int:
    """How many folders the process's inotify descriptor watches now (0 when none is open)."""
    with _hub_lock:
        return 0 if _hub is None else len(_hub._wds)


class InotifyWatcher:
    """Subscribes ``paths`` to the process's inotify hub; calls back on the event loop.

    Raises ``OSError`` (or ``ImportError``) from the constructor when inotify is unavailable:
    no kernel support, ``max_user_watches`` / ``max_user_instances`` exhausted.
    """

    mode = "inotify"

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
        self._lock = threading.Lock()
        self._pending: set[Path] = set()
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callback: ChangeCallback | None = None
        self._hub: _Hub | None = _join(self)

    async def start(self, callback: ChangeCallback) -> None:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._callback = callback

    def notify(self, paths: set[Path]) -> None:
        """From the reader thread: these paths may have changed. One delivery pending at most."""
        with self._lock:
            loop = self._loop
            if loop is None:
                return  # not started yet: like a watcher that was not there
            self._pending |= paths
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop closed
            with self._lock:
                self._scheduled = False

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, set(), False
            callback = self._callback
        if callback is None:
            return
        for p in self.paths:
            if p in pending:
                try:
                    callback(p)
                except Exception:
                    log.exception("file change callback failed")

    async def stop(self) -> None:
        with self._lock:
            self._callback = None
            self._loop = None
            hub, self._hub = self._hub, None
        if hub is not None:
            await asyncio.to_thread(_leave, self, hub)
