"""Liveness judged from outside the event loop.

The loop's heartbeat cannot report that the loop itself is blocked (a blocked loop runs no
heartbeat, and the last published SERVING would stay). :class:`LoopWatchdog` runs on its own
thread: the heartbeat calls :meth:`LoopWatchdog.beat`; when no beat came for longer than the
limit, the watchdog calls ``on_blocked`` once, from its thread (the app then holds liveness
NOT_SERVING in every publisher: an override combined with the loop's last verdict under the
lock the loop's publish takes, so it never rewrites what the loop published). The next beat
reports that the watchdog had tripped, so the loop lifts the override and republishes its
own verdict.

The clock is injected: tests drive :meth:`LoopWatchdog.check` with a fake clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class LoopWatchdog:
    def __init__(
        self,
        limit_s: float,
        on_blocked: Callable[[float], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit_s = limit_s
        self._on_blocked = on_blocked
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._tripped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> bool:
        """The loop is alive (called on the loop). True when the watchdog tripped since the
        previous beat: the loop must publish its own liveness verdict again."""
        with self._lock:
            self._last_beat = self._clock()
            tripped, self._tripped = self._tripped, False
        return tripped

    def check(self) -> bool:
        """One look (watchdog thread). True while tripped; trips once per blockage."""
        with self._lock:
            if self._tripped:
                return True
            quiet = self._clock() - self._last_beat
            if quiet <= self.limit_s:
                return False
            self._tripped = True
            # inside the lock: a beat that comes meanwhile is seen by the next beat() call
            try:
                self._on_blocked(quiet)
            except Exception:
                log.exception("watchdog action failed")
            return True

    def start(self, every_s: float) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        with self._lock:
            self._last_beat = self._clock()

        def run() -> None:
            while not self._stop.wait(every_s):
                self.check()

        self._thread = threading.Thread(target=run, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)
