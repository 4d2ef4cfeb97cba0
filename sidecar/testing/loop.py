"""Event-loop blocking detection for tests: asyncio debug mode's slow-callback warnings, and
the stacks that held the loop.

Run the loop with ``loop.set_debug(True)`` and ``loop.slow_callback_duration = s``: asyncio then
logs ``Executing <Handle ...> took N seconds`` (logger ``asyncio``) for every callback or task
step that held the loop ``s`` or longer. :class:`SlowCallbacks` collects those lines;
:class:`LoopStacks` samples the loop thread's stack while it is busy, so a failure names the
code that blocked, not just the task it ran in.
"""

from __future__ import annotations

import collections
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["LoopStacks", "SlowCallbacks", "slow_callbacks"]

_SLOW = re.compile(r"^Executing .* took [0-9.]+ seconds")
_IDLE = frozenset({"select", "poll", "epoll", "_run_once"})


class SlowCallbacks(logging.Handler):
    """Collects asyncio's debug-mode "Executing ... took N seconds" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._lock = threading.Lock()
        self._seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if _SLOW.match(msg):
            with self._lock:
                self._seen.append(msg)

    @property
    def seen(self) -> list[str]:
        with self._lock:
            return list(self._seen)

    def matching(self, *words: str) -> list[str]:
        """The warnings naming any of ``words`` (all of them without)."""
        return [m for m in self.seen if not words or any(w in m for w in words)]

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


@contextmanager
def slow_callbacks() -> Iterator[SlowCallbacks]:
    """A :class:`SlowCallbacks` on the ``asyncio`` logger (level WARNING) for the duration."""
    handler = SlowCallbacks()
    logger = logging.getLogger("asyncio")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


class LoopStacks:
    """Samples the stack of ``thread`` (the loop's; it may start later) every ``interval_s``
    while it is not waiting in its selector; :meth:`report` lists the most frequent busy
    stacks."""

    def __init__(self, thread: threading.Thread, interval_s: float = 0.01, depth: int = 10) -> None:
        self._target = thread
        self._interval = interval_s
        self._depth = depth
        self._busy: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loop-stacks", daemon=True)

    def __enter__(self) -> LoopStacks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            tid = self._target.ident
            frame = None if tid is None else sys._current_frames().get(tid)
            if frame is None or frame.f_code.co_name in _IDLE:
                continue
            stack = "".join(traceback.format_stack(frame)[-self._depth :])
            with self._lock:
                self._busy[stack] += 1

    def report(self, top: int = 3) -> str:
        with self._lock:
            common = self._busy.most_common(top)
        return "\n".join(f"--- seen busy {n}x ({n * self._interval:.2f}s):\n{st}" for st, n in common)
