"""Watch messages sent from their own threads, latest-wins, one drain per stream.

No Watch stream holds an RPC thread: the servicer registers a stream and returns; a status
change (:class:`~sidecar.publish.health_store.HealthRegistry`) asks :class:`WatchSender` to
drain that stream on a small pool of sender threads, always sending the *newest* status and
never a duplicate. A slow reader only delays its own stream; a stream whose send is stuck
longer than ``stuck_send_s`` is cancelled so it cannot hold a sender thread forever. After a
burst of Watch calls the freed heap is given back to the OS (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from sidecar.publish.health_store import RESPONSE_BYTES, SERVICE_UNKNOWN, HealthRegistry, Watcher

# the servicer's logger: these lines were always logged as the grpc.health.v1 server's
log = logging.getLogger("sidecar.publish.grpc_health")


class RpcStats:
    """Counters of the health RPCs, exported to Prometheus by a collector."""

    __slots__ = ("_lock", "calls", "watch_rejected", "watch_stuck_cancelled", "watchers_open")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[tuple[str, str], int] = {}
        self.watchers_open = 0
        self.watch_rejected = 0
        self.watch_stuck_cancelled = 0

    def count(self, method: str, code: str) -> None:
        key = (method, code)
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1

    def try_open_watch(self, limit: int) -> bool:
        with self._lock:
            if self.watchers_open >= limit:
                self.watch_rejected += 1
                return False
            self.watchers_open += 1
            return True

    def close_watch(self) -> None:
        with self._lock:
            self.watchers_open -= 1


TRIM_AFTER_CALLS = 1000


def _load_malloc_trim() -> Callable[[], None]:
    try:
        fn = ctypes.CDLL(None).malloc_trim  # glibc; absent on musl and elsewhere
    except (AttributeError, OSError):
        return lambda: None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> None:
        fn(0)

    return trim


_malloc_trim = _load_malloc_trim()


class WatchSender:
    """Sends Watch messages from its own threads, latest-wins, one drain per stream."""

    def __init__(
        self,
        registry: HealthRegistry,
        stats: RpcStats,
        *,
        threads: int = 4,
        stuck_send_s: float = 30.0,
        trim: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self.stats = stats
        self.stuck_send_s = stuck_send_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="watch-send")
        self._stop = threading.Event()
        self._trim = trim if trim is not None else _malloc_trim
        self._trimmed_at = 0
        self._last_tick = 0
        self._reaper = threading.Thread(target=self._reap_stuck, name="watch-reaper", daemon=True)
        self._reaper.start()
        registry.sender = self

    def notify(self, w: Watcher) -> None:
        with w.lock:
            if w.sending or w.closed:
                return  # the running drain reads the newest status before it stops
            w.sending = True
        try:
            self._pool.submit(self._drain, w)
        except RuntimeError:  # pool shut down
            with w.lock:
                w.sending = False

    def _drain(self, w: Watcher) -> None:
        while True:
            with w.lock:
                if w.closed:
                    w.sending = False
                    return
                status = self.registry.get(w.service)
                if status is None:
                    status = SERVICE_UNKNOWN
                if status == w.last_sent:
                    if not w.ending:
                        w.sending = False
                        return
                    payload: bytes | None = None  # end the stream (status OK)
                else:
                    payload = RESPONSE_BYTES[status]
                w.send_started = time.monotonic()
            try:
                w.send(payload)
            except Exception:  # a stream that broke while sending is simply over
                log.debug("watch send failed", exc_info=True)
                payload = None
            with w.lock:
                w.send_started = None
                if payload is None:
                    w.closed = True
                    w.sending = False
                    return
                w.last_sent = status
            if not w.context.is_active():
                with w.lock:
                    w.closed = True
                    w.sending = False
                return

    def _watch_calls(self) -> int:
        """Watch calls ended or refused so far (any status)."""
        with self.stats._lock:
            return sum(n for (method, _), n in self.stats.calls.items() if method == "Watch")

    def maybe_trim(self) -> bool:
        """After a burst of Watch calls (at least ``TRIM_AFTER_CALLS`` since the last trim) has
        died down (fewer than a tenth of that since the previous tick), give the freed heap
        back to the OS: glibc keeps it otherwise, and a 5,000-stream flood left RSS ~70 MB
        above its start for good. Returns whether it trimmed."""
        calls = self._watch_calls()
        burst = calls - self._trimmed_at
        recent = calls - self._last_tick
        self._last_tick = calls
        if burst < TRIM_AFTER_CALLS or recent >= TRIM_AFTER_CALLS // 10:
            return False
        self._trimmed_at = calls
        self._trim()
        return True

    def _reap_stuck(self) -> None:
        """Cancel streams whose send has been stuck (a client that stopped reading while its
        flow-control window is full): the blocked sender thread is freed by the cancel. Also
        trims the heap after a Watch burst (:meth:`maybe_trim`)."""
        while not self._stop.wait(min(5.0, self.stuck_send_s / 4)):
            self.maybe_trim()
            now = time.monotonic()
            for w in self.registry.all_watchers():
                started = w.send_started
                if started is not None and now - started > self.stuck_send_s:
                    log.warning("cancelling a Watch stream stuck in send", extra={"service": w.service})
                    self.stats.watch_stuck_cancelled += 1
                    w.context.cancel()

    def idle(self) -> bool:
        return not any(w.sending for w in self.registry.all_watchers())

    def shutdown(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.idle():
            time.sleep(0.01)
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
