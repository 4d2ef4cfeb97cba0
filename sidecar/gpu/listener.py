"""The Xid listener: a daemon thread blocked in the backend's event wait.

It waits with a short timeout (``event_wait_timeout``, default 0.2 s) so that :meth:`stop`
returns promptly, and hands every event to ``on_event`` on this thread (the component turns it
into results and calls ``sink.submit``, which is thread-safe). The same code runs against the
real NVML event set and the simulated backend's queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sidecar.gpu.backend import GpuBackend, GpuEvent, GpuLostError, NvmlError

log = logging.getLogger(__name__)


class XidListener:
    """Runs ``backend.wait_event`` in a loop on its own daemon thread."""

    def __init__(
        self,
        backend: GpuBackend,
        on_event: Callable[[GpuEvent], None],
        *,
        on_error: Callable[[NvmlError], None] | None = None,
        wait_timeout_s: float = 0.2,
        error_backoff_s: float = 1.0,
    ) -> None:
        self._backend = backend
        self._on_event = on_event
        self._on_error = on_error
        self._timeout = wait_timeout_s
        self._backoff = error_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.events_seen = 0

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="xid-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                event = self._backend.wait_event(self._timeout)
            except GpuLostError as exc:
                self._report(exc)
                self._stop.wait(self._backoff)
                continue
            except NvmlError as exc:
                self._report(exc)
                self._stop.wait(self._backoff)
                continue
            except Exception:  # never let the thread die silently
                log.exception("Xid listener: unexpected error from the event wait")
                self._stop.wait(self._backoff)
                continue
            if event is None or self._stop.is_set():
                continue
            self.events_seen += 1
            try:
                self._on_event(event)
            except Exception:
                log.exception("Xid listener: event handler failed", extra={"uuid": event.uuid})

    def _report(self, exc: NvmlError) -> None:
        log.warning("NVML event wait failed", extra={"reason": exc.reason, "error": exc.text})
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                log.exception("Xid listener: error handler failed")

    def stop(self, timeout_s: float | None = None) -> bool:
        """Ask the thread to stop and wait for it (default: a few wait timeouts). True if it
        has exited."""
        self._stop.set()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s if timeout_s is not None else self._timeout * 5 + 1.0)
        return not thread.is_alive()
