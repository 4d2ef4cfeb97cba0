"""Turning SIGINT / SIGTERM into a cancelled phase, as the Go tool's root context does."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["Cancelled", "Interrupts"]


class Cancelled(Exception):
    """Raised from the SIGINT / SIGTERM handler to abandon the phase in progress."""


_SIGNAL_NAMES = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated"}


class Interrupts:
    """Turns SIGINT / SIGTERM into :class:`Cancelled` while a phase is in progress.

    Like the Go tool's cancelled root context: a signal while connecting fails the dial (exit 2),
    during the RPC fails the RPC (exit 3), and one that arrives between phases makes the next
    phase fail at once. Handlers are installed only on the main thread and restored afterwards,
    so calling :func:`sidecar.probe.main` in-process leaves the host's handlers as they were.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self.received: str | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = _SIGNAL_NAMES.get(signal.Signals(signum), str(signum))
            self._log(f"cancellation received (signal: {self.received})")
        if self.armed:
            self.armed = False
            raise Cancelled(self.received)

    def arm(self) -> None:
        """Enter a cancellable phase; fails at once if a signal already arrived."""
        if self.received is not None:
            raise Cancelled(self.received)
        self.armed = True

    def disarm(self) -> None:
        self.armed = False
