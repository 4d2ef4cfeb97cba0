"""grpc.health.v1 server: Check, Watch and List, exactly as the spec says.

Server flavour, chosen by measurement (BENCHMARKS.md): grpcio's **sync** server with a small
thread pool answers Check about 1.8x faster per core than grpc.aio (whose per-RPC cost sets a
ceiling at about the stock asyncio servicer's rate), but the stock sync servicer ties a pool
thread to every Watch stream. Here no Watch ever holds an RPC thread:

- ``Check`` and ``List`` are generic handlers on raw bytes: the request's service name is
  looked up in a small cache of request bytes, the answer is one of four pre-serialised
  responses. No protobuf encoding on the hot path, no I/O, no lock.
- ``Watch`` uses grpcio's non-blocking stream handlers (``experimental_non_blocking``): the
  handler registers the stream and returns at once. Messages are sent by a separate small
  pool of sender threads (:class:`WatchSender`), one drain per stream at a time, always
  sending the *newest* status (latest-wins) and never a duplicate. A slow reader only delays
  its own stream; a stream whose send is stuck longer than ``stuck_send_s`` is cancelled so
  it cannot hold a sender thread forever.

Every service starts NOT_SERVING (the stock servicers start ``""`` as SERVING). Unknown
service: Check -> ``NOT_FOUND``; Watch -> ``SERVICE_UNKNOWN``, stream kept open, real status
sent when the service appears. Watch streams are capped (``RESOURCE_EXHAUSTED`` beyond), List
too. On shutdown every stream is sent NOT_SERVING and then ended with status OK.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from sidecar.core.protocols import Publication

log = logging.getLogger(__name__)

SERVICE_NAME = "grpc.health.v1.Health"
_Status = health_pb2.HealthCheckResponse.ServingStatus
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
UNKNOWN: int = health_pb2.HealthCheckResponse.UNKNOWN

# Pre-serialised responses, one per status: Check and Watch never encode protobuf.
_RESPONSE_BYTES: dict[int, bytes] = {
    s: health_pb2.HealthCheckResponse(status=s).SerializeToString()
    for s in (UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN)
}

_NAME_CACHE_MAX = 1024  # request bytes -> service name; bounded against hostile names


def status_name(status: int) -> str:
    return str(_Status.Name(status))


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


class Watcher:
    """One open Watch stream."""

    __slots__ = (
        "closed",
        "context",
        "ending",
        "last_sent",
        "lock",
        "send",
        "send_started",
        "sending",
        "service",
    )

    def __init__(self, service: str, send: Callable[[Any], None], context: Any) -> None:
        self.service = service
        self.send = send
        self.context = context
        self.lock = threading.Lock()
        self.last_sent: int | None = None
        self.sending = False  # a drain is queued or running for this stream
        self.send_started: float | None = None  # monotonic time of the send in flight
        self.ending = False  # shutdown: send the last status, then end the stream with OK
        self.closed = False


class HealthRegistry:
    """Service name -> status, read by RPC threads, written by the event loop thread."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        self._lock = threading.Lock()  # guards _watchers
        self.closed = False
        self.sender: WatchSender | None = None

    def get(self, service: str) -> int | None:
        return self._status.get(service)

    def snapshot(self) -> dict[str, int]:
        return self._status.copy()

    def set_statuses(self, statuses: Mapping[str, int]) -> None:
        """Apply a verdict: changed services wake their watchers; services absent from
        ``statuses`` keep their last status (services are never silently removed)."""
        changed = []
        for service, status in statuses.items():
            if self._status.get(service) != status:
                self._status[service] = status
                changed.append(service)
        if changed:
            self._notify(changed)

    def publish(self, publication: Publication, only: str | None = None) -> None:
        """Publisher: the services' statuses (``only``: that one; the others keep theirs)."""
        verdicts = publication.verdicts
        written = verdicts if only is None else {only: verdicts[only]}
        self.set_statuses({name: SERVING if v.serving else NOT_SERVING for name, v in written.items()})

    def remove(self, services: Iterable[str]) -> None:
        gone = [s for s in services if self._status.pop(s, None) is not None]
        if gone:
            self._notify(gone)

    def _notify(self, services: Iterable[str]) -> None:
        sender = self.sender
        if sender is None:
            return
        with self._lock:
            targets = [w for s in services for w in self._watchers.get(s, ())]
        for w in targets:
            sender.notify(w)

    def add_watcher(self, w: Watcher) -> None:
        with self._lock:
            self._watchers.setdefault(w.service, set()).add(w)

    def drop_watcher(self, w: Watcher) -> None:
        with self._lock:
            ws = self._watchers.get(w.service)
            if ws is not None:
                ws.discard(w)
                if not ws:
                    del self._watchers[w.service]

    def all_watchers(self) -> list[Watcher]:
        with self._lock:
            return [w for ws in self._watchers.values() for w in ws]

    def watcher_count(self) -> int:
        with self._lock:
            return sum(len(ws) for ws in self._watchers.values())

    def close(self) -> None:
        """Shutdown: every stream is sent its (NOT_SERVING) status and then ended with OK."""
        self.closed = True
        sender = self.sender
        for w in self.all_watchers():
            w.ending = True
            if sender is not None:
                sender.notify(w)


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
                    payload = _RESPONSE_BYTES[status]
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


class RpcExecutor(ThreadPoolExecutor):
    """The RPC thread pool of the grpc server: Watch registrations run apart from Check/List.

    grpcio's sync server hands every call to one executor in arrival order. Under a burst of
    thousands of Watch calls (each registered or refused in some tens of microseconds) one
    FIFO pool puts a kubelet probe's Check behind all of them, and eight threads busy with
    them contend for the GIL with the thread that answers it. Tasks whose behaviour is
    ``background`` (the Watch handler, which never blocks) go to their own pool of
    ``background_threads``; everything else keeps the ``max_workers`` threads to itself."""

    def __init__(
        self, max_workers: int, *, thread_name_prefix: str = "grpc-rpc", background_threads: int = 2
    ) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.background: object = object()  # matches nothing until set
        self._background_pool = ThreadPoolExecutor(
            max_workers=background_threads, thread_name_prefix=f"{thread_name_prefix}-watch"
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # grpcio passes the method's behaviour among the arguments of its ``*_in_pool`` task
        if self.background in args:
            return self._background_pool.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._background_pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)


class HealthService:
    """The grpc.health.v1.Health handlers on raw bytes (a generic handler)."""

    def __init__(
        self,
        registry: HealthRegistry,
        *,
        max_watchers: int = 1000,
        list_max_services: int = 100,
        max_service_name_bytes: int = 1024,
        stats: RpcStats | None = None,
        sender_threads: int = 4,
        stuck_send_s: float = 30.0,
    ) -> None:
        self.registry = registry
        self.max_watchers = max_watchers
        self.list_max_services = list_max_services
        self.max_service_name_bytes = max_service_name_bytes
        self.stats = stats or RpcStats()
        self.sender = WatchSender(registry, self.stats, threads=sender_threads, stuck_send_s=stuck_send_s)
        self._names: dict[bytes, str] = {}

        def watch(request: bytes, context: Any, send_response_callback: Callable[[Any], None]) -> None:
            self.watch(request, context, send_response_callback)

        watch.experimental_non_blocking = True  # type: ignore[attr-defined]
        self.watch_behavior = watch

    def _service_name(self, request: bytes) -> str | None:
        """Decode HealthCheckRequest.service; None when malformed or too long."""
        name = self._names.get(request)
        if name is not None:
            return name
        if len(request) > self.max_service_name_bytes + 8:
            return None
        try:
            msg = health_pb2.HealthCheckRequest.FromString(request)
        except DecodeError:
            return None
        name = str(msg.service)
        if len(name.encode("utf-8")) > self.max_service_name_bytes:
            return None
        if len(self._names) < _NAME_CACHE_MAX:
            self._names[request] = name
        return name

    def _invalid(self, method: str, context: Any) -> None:
        self.stats.count(method, "INVALID_ARGUMENT")
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed request or service name over {self.max_service_name_bytes} bytes",
        )

    def check(self, request: bytes, context: Any) -> bytes:
        name = self._service_name(request)
        if name is None:
            self._invalid("Check", context)
        status = self.registry.get(name)  # type: ignore[arg-type]
        if status is None:
            self.stats.count("Check", "NOT_FOUND")
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        self.stats.count("Check", "OK")
        return _RESPONSE_BYTES[status]  # type: ignore[index]

    def list(self, request: bytes, context: Any) -> bytes:
        try:
            health_pb2.HealthListRequest.FromString(request)
        except DecodeError:
            self.stats.count("List", "INVALID_ARGUMENT")
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        statuses = self.registry.snapshot()
        if len(statuses) > self.list_max_services:
            self.stats.count("List", "RESOURCE_EXHAUSTED")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(statuses)} services exceed the list limit of {self.list_max_services}",
            )
        resp = health_pb2.HealthListResponse()
        for service, status in statuses.items():
            resp.statuses[service].status = status
        self.stats.count("List", "OK")
        return bytes(resp.SerializeToString())

    def watch(self, request: bytes, context: Any, send: Callable[[Any], None]) -> None:
        """Register the stream and return at once (no thread is held by the stream)."""
        name = self._service_name(request)
        if name is None:
            self._invalid("Watch", context)
            return
        if self.registry.closed:
            self.stats.count("Watch", "UNAVAILABLE")
            context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        if not self.stats.try_open_watch(self.max_watchers):
            self.stats.count("Watch", "RESOURCE_EXHAUSTED")
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent Watch streams (limit {self.max_watchers})",
            )
        w = Watcher(name, send, context)
        self.registry.add_watcher(w)

        def closed() -> None:
            with w.lock:
                w.closed = True
            self.registry.drop_watcher(w)
            self.stats.close_watch()
            self.stats.count("Watch", "OK")

        if not context.add_callback(closed):  # the RPC already ended
            closed()
            return
        self.sender.notify(w)  # the current status, at once

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "Check": grpc.unary_unary_rpc_method_handler(self.check),
            "List": grpc.unary_unary_rpc_method_handler(self.list),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch_behavior),
        }

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler (tests, servers built by hand); :meth:`add_to_server` is faster."""
        return grpc.method_handlers_generic_handler(SERVICE_NAME, self.method_handlers())

    def add_to_server(self, server: grpc.Server) -> None:
        """Register Check, List and Watch as *registered* methods: grpc-core then keeps one
        queue of not-yet-requested calls per method, so a burst of thousands of Watch calls
        waits in Watch's own queue and a Check arriving meanwhile is matched at once (with one
        generic handler every call shares one queue, and grpc-core sheds calls from it at
        random once more than 1,000 wait, kubelet probes among them)."""
        server.add_registered_method_handlers(SERVICE_NAME, self.method_handlers())


def to_wire_statuses(serving: Mapping[str, bool]) -> dict[str, int]:
    return {name: SERVING if ok else NOT_SERVING for name, ok in serving.items()}
