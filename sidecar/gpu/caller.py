"""Run blocking backend calls off the event loop, with a watchdog and no stacking of stuck threads.

One daemon worker thread per backend executes calls in order. A call that does not return
within its timeout raises :class:`NvmlHungError` in the awaiting coroutine; the thread stays
stuck in the driver (Python cannot interrupt it), and until it returns every later call is
refused at once with :class:`NvmlHungError` instead of queueing behind it (single-flight). The
thread is a daemon so a driver hang never blocks process exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sidecar.core.protocols import Clock
from sidecar.gpu.backend import NvmlHungError

log = logging.getLogger(__name__)

T = TypeVar("T")

_Job = tuple[concurrent.futures.Future[Any], Callable[[], Any], str]


class NvmlCaller:
    """Executes backend calls on a dedicated daemon thread (see module doc).

    ``observe(op, seconds)`` is called after each completed call (for the latency histogram);
    ``on_hung(op)`` when a call exceeds its timeout; ``on_unstuck()`` (on the worker thread)
    when a call reported hung finally returns, so the owner can re-evaluate at once.
    """

    def __init__(
        self,
        name: str = "nvml-caller",
        *,
        observe: Callable[[str, float], None] | None = None,
        on_hung: Callable[[str], None] | None = None,
        on_unstuck: Callable[[], None] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._name = name
        self._clock = clock
        self._observe = observe
        self._on_hung = on_hung
        self._on_unstuck = on_unstuck
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stuck_op: str | None = None  # op of a call past its timeout, still running
        self._stuck_since = 0.0
        self._current: tuple[str, float] | None = None

    @property
    def stuck(self) -> str | None:
        """The operation that is stuck past its timeout, if any."""
        return self._stuck_op

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            future, fn, op = job
            if not future.set_running_or_notify_cancel():
                continue  # its caller gave up before it started: do not touch the driver
            start = self._clock()
            with self._lock:
                self._current = (op, start)
            try:
                result = fn()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            elapsed = self._clock() - start
            with self._lock:
                self._current = None
                was_stuck = self._stuck_op is not None
                self._stuck_op = None
            if was_stuck:
                log.warning(
                    "NVML call returned after being reported hung",
                    extra={"op": op, "seconds": round(elapsed, 3)},
                )
                if self._on_unstuck is not None:
                    self._on_unstuck()
            if self._observe is not None:
                self._observe(op, elapsed)

    async def call(self, fn: Callable[[], T], *, op: str, timeout_s: float) -> T:
        """Run ``fn`` on the worker thread; raise NvmlHungError after ``timeout_s``."""
        with self._lock:
            if self._stuck_op is not None:
                stuck_for = self._clock() - self._stuck_since
                raise NvmlHungError(
                    f"NVML call {self._stuck_op!r} has not returned for {stuck_for:.1f}s; "
                    f"{op!r} not attempted"
                )
            self._ensure_thread()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((future, fn, op))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout_s)
        except TimeoutError:
            future.cancel()
            with self._lock:
                running = self._current is not None and not future.cancelled()
                if running and self._stuck_op is None:
                    self._stuck_op = op
                    self._stuck_since = self._clock() - timeout_s
            if self._on_hung is not None:
                self._on_hung(op)
            raise NvmlHungError(f"NVML call {op!r} did not return within {timeout_s:g}s") from None

    def close(self) -> None:
        """Let the worker exit once its current call (if any) returns."""
        self._queue.put(None)
