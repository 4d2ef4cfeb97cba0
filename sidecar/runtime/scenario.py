"""The scenario file: simulated GPU state and canary fault modes, driven from outside.

Tests, the demo and chaos drills edit one YAML file; the sidecar re-reads it when it changes.
A file that does not parse (for example half-written), is empty (truncated by ``>`` or an
editor, i.e. not written yet), or whose shape is wrong (an unknown top-level key, ``xid: 79``
instead of a list) is ignored, logged once in a bounded line, and the last good document stays
in force, so a user never sees a flap caused by their editor. Until a first good document is
read the simulated GPU backend reports NVML unavailable (fail closed, never a default GPU).
The file is read with the bounds of :mod:`sidecar.runtime.safeload` (size, nesting, aliases).

Only used with ``serve --simulate``. The keys are documented in ``docs/scenario.md``:
``gpus:`` and ``nvml:`` (simulated GPU backend), ``canary:`` (worker fault modes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sidecar.runtime.safeload import MAX_SCENARIO_BYTES, clip, load_yaml_bounded, read_bounded
from sidecar.runtime.watch import FileChanges, Stamp, stamp

log = logging.getLogger(__name__)

ScenarioListener = Callable[[Mapping[str, Any]], None]


TOP_LEVEL_KEYS = ("gpus", "nvml", "canary")
CANARY_KEYS = ("mode", "delay_ms", "leak_mib", "gpu_fault")


def parse_scenario(text: str, where: str = "scenario") -> dict[str, Any] | None:
    """Parse and validate a scenario document.

    Returns ``None`` for an empty document (a file not written yet). Raises ``ValueError``
    with a short message naming each bad key and the expected shape.
    """
    doc = load_yaml_bounded(text, where)  # UnsafeDocumentError is a ValueError
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: top level must be a mapping, got {type(doc).__name__}")
    problems = validate_scenario(doc)
    if problems:
        raise ValueError(clip(f"{where}: " + "; ".join(problems)))
    return doc


def validate_scenario(doc: Mapping[str, Any]) -> list[str]:
    """Every problem of a scenario mapping's shape, each naming its key."""
    # imported here: both modules import this one
    from sidecar.canary.protocol import FAULT_MODES, GPU_FAULTS
    from sidecar.gpu.simulated import parse_sim_state

    problems = [
        f"{clip(str(key), 40)}: unknown top-level key (expected {', '.join(TOP_LEVEL_KEYS)})"
        for key in doc
        if key not in TOP_LEVEL_KEYS
    ]
    try:
        parse_sim_state(doc)
    except ValueError as exc:
        problems.append(str(exc))
    canary = doc.get("canary")
    if canary is not None:
        if not isinstance(canary, Mapping):
            problems.append(f"canary: must be a mapping, got {type(canary).__name__}")
        else:
            problems.extend(
                f"canary.{clip(str(key), 40)}: unknown key (expected {', '.join(CANARY_KEYS)})"
                for key in canary
                if key not in CANARY_KEYS
            )
            mode = canary.get("mode", "ok")
            if mode not in FAULT_MODES:
                problems.append(f"canary.mode: must be one of {', '.join(FAULT_MODES)}")
            fault = canary.get("gpu_fault", "none")
            if fault not in GPU_FAULTS:
                problems.append(f"canary.gpu_fault: must be one of {', '.join(GPU_FAULTS)}")
            for key in ("delay_ms", "leak_mib"):
                value = canary.get(key, 0)
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e7:
                    problems.append(f"canary.{key}: must be a number >= 0")
    return problems


class ScenarioFile:
    """Watches one scenario file and notifies listeners with each new good document.

    Change detection (:class:`sidecar.runtime.watch.FileChanges`): inotify on the file's folder
    (sees in-place writes, atomic renames and a folder created later) wakes a reload at once; a
    ``stat`` poll backs it up every second, or does the work every ``poll_interval_s`` where
    inotify is unavailable or blind (NFS / FUSE).
    Listeners run on the event loop thread, in subscription order.
    """

    def __init__(self, path: Path | None, poll_interval_s: float = 0.02) -> None:
        self.path = path
        self.poll_interval_s = poll_interval_s
        self._doc: dict[str, Any] = {}
        # False until a first good document is read (a scenario path that is missing, empty or
        # invalid at start is "not written yet": fail closed). No path: the default document.
        self.has_document = path is None
        self._listeners: list[ScenarioListener] = []
        self._stamp: Stamp | None = None
        self._changes: FileChanges | None = None
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

    def _stat(self) -> Stamp | None:
        return None if self.path is None else stamp(self.path)

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
            text = read_bounded(self.path, MAX_SCENARIO_BYTES)
            doc = parse_scenario(text, str(self.path))
            if doc is None:
                raise ValueError(f"{self.path}: empty (not written yet)")
        except (OSError, ValueError) as exc:
            return exc
        return doc

    def _apply(self, got: dict[str, Any] | Exception | None) -> bool:
        if got is None:
            return False
        if isinstance(got, Exception):
            error = clip(str(got))
            if self.last_error != error:
                log.warning(
                    "scenario file ignored, last good state stays",
                    extra={"path": str(self.path), "error": error},
                )
            self.last_error = error
            return False
        doc = got
        self.last_error = None
        if doc == self._doc and self.has_document:
            return False
        self._doc = doc
        self.has_document = True
        self.generation += 1
        for listener in list(self._listeners):
            try:
                listener(doc)
            except Exception:  # a listener bug must not stop the others or the watcher
                log.exception("scenario listener failed")
        return True

    async def start(self) -> None:
        await self._reload_logged()
        if self.path is not None and self._changes is None:
            self._changes = FileChanges(
                [self.path], self._reload_logged, name="scenario file", poll_interval_s=self.poll_interval_s
            )
            await self._changes.start()

    async def _reload_logged(self) -> None:
        """``areload``, where an unexpected error is logged (bounded) and never stops watching."""
        try:
            await self.areload()
        except Exception as exc:  # the watcher must survive any document
            error = clip(f"{type(exc).__name__}: {exc}")
            if self.last_error != error:
                log.error(
                    "scenario reload failed, last good state stays",
                    extra={"path": str(self.path), "error": error},
                )
            self.last_error = error

    async def stop(self) -> None:
        if self._changes is not None:
            await self._changes.stop()
            self._changes = None
