"""The scenario file: simulated GPU state and canary fault modes, driven from outside.

Tests, the demo and chaos drills edit one YAML file; the sidecar re-reads it when it changes.
A file that does not parse (for example half-written) is ignored and the last good document
stays in force, so a user never sees a flap caused by their editor.

Only used with ``serve --simulate``. The keys are documented in ``docs/scenario.md``:
``gpus:`` (simulated GPU backend), ``canary:`` (worker fault modes), ``workload:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from sidecar.engine.watch import InotifyWatcher

log = logging.getLogger(__name__)

ScenarioListener = Callable[[Mapping[str, Any]], None]


def parse_scenario(text: str) -> dict[str, Any]:
    """Parse a scenario document. Raises ``ValueError`` when it is not a YAML mapping."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from exc
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"top level must be a mapping, got {type(doc).__name__}")
    return doc


class ScenarioFile:
    """Watches one scenario file and notifies listeners with each new good document.

    Change detection: inotify on the file's folder (sees in-place writes and atomic renames)
    wakes a reload at once; a ``stat`` poll (size, mtime_ns, inode) backs it up every second,
    or does the work every ``poll_interval_s`` where inotify is unavailable.
    Listeners run on the event loop thread, in subscription order.
    """

    def __init__(self, path: Path | None, poll_interval_s: float = 0.02) -> None:
        self.path = path
        self.poll_interval_s = poll_interval_s
        self._doc: dict[str, Any] = {}
        self._listeners: list[ScenarioListener] = []
        self._stamp: tuple[int, int, int] | None = None
        self._task: asyncio.Task[None] | None = None
        self._inotify: InotifyWatcher | None = None
        self._kick = asyncio.Event()  # inotify saw a change: read at once
        self.generation = 0  # how many good documents were applied
        self.last_error: str | None = None

    def current(self) -> Mapping[str, Any]:
        return self._doc

    def subscribe(self, listener: ScenarioListener) -> None:
        self._listeners.append(listener)

    def unsubscribe_owner(self, owner: object) -> int:
        """Drop the listeners that are methods of ``owner`` (a component a reload retired).
        Returns how many were dropped."""
        keep = [fn for fn in self._listeners if getattr(fn, "__self__", None) is not owner]
        dropped = len(self._listeners) - len(keep)
        self._listeners = keep
        return dropped

    @property
    def listeners(self) -> int:
        """How many listeners are subscribed."""
        return len(self._listeners)

    def _stat(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def reload(self) -> bool:
        """Read the file now if it changed. Returns True when a new good document applied.
        Blocking: the watcher uses :meth:`areload`, which reads and parses on a thread."""
        return self._apply(self._read())

    async def areload(self) -> bool:
        """:meth:`reload` with the file read and the parse on a thread (a huge file never
        blocks the event loop); the listeners still run on the loop."""
        return self._apply(await asyncio.to_thread(self._read))

    def _read(self) -> dict[str, Any] | Exception | None:
        """The new document, the error that refused it, or None (unchanged or missing)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        if stamp is None or self.path is None:
            return None  # a missing file keeps the last good state
        try:
            text = self.path.read_text(encoding="utf-8")
            return parse_scenario(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            return exc

    def _apply(self, got: dict[str, Any] | Exception | None) -> bool:
        if got is None:
            return False
        if isinstance(got, Exception):
            exc = got
            if self.last_error != str(exc):
                log.warning(
                    "scenario file ignored, last good state stays",
                    extra={"path": str(self.path), "error": str(exc)},
                )
            self.last_error = str(exc)
            return False
        doc = got
        self.last_error = None
        if doc == self._doc and self.generation > 0:
            return False
        self._doc = doc
        self.generation += 1
        for listener in list(self._listeners):
            try:
                listener(doc)
            except Exception:  # a listener bug must not stop the others or the watcher
                log.exception("scenario listener failed")
        return True

    async def start(self) -> None:
        await self.areload()
        interval = self.poll_interval_s
        if self.path is not None:
            # inotify on the file's folder (sees atomic renames) wakes the reload at once; the
            # stat poll then only backs it up, slowly. Without inotify the poll does the work.
            from sidecar.engine.watch import InotifyWatcher

            try:
                self._inotify = InotifyWatcher([self.path])
            except (OSError, ImportError) as exc:
                log.info("scenario file: inotify unavailable, polling", extra={"error": str(exc)})
            else:
                loop = asyncio.get_running_loop()

                def wake(_path: Path) -> None:
                    loop.call_soon_threadsafe(self._kick.set)

                await self._inotify.start(wake)
                interval = max(interval, 1.0)
        if self._task is None:
            self._task = asyncio.create_task(self._watch(interval), name="scenario-watch")

    async def _watch(self, interval: float) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval)
            self._kick.clear()
            try:
                await self.areload()
            except Exception:  # the watcher must survive anything a file does
                log.exception("scenario reload failed")

    async def stop(self) -> None:
        if self._inotify is not None:
            await self._inotify.stop()
            self._inotify = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
