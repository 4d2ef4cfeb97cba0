"""The bounded HTTP/1.0 server core under the HTTP publisher: selector, caps, descriptor reserve.

Hostile clients cannot exhaust threads, memory or descriptors:

- One selector thread accepts connections and reads each request's header itself
  (non-blocking): a connection holds no thread until its whole header has arrived, so slowloris
  and idle connections cost one descriptor each and nothing else.
- At most ``max_connections`` connections may be sending their header. A new connection
  beyond that evicts the oldest one (after a last read: one whose header has arrived is
  answered instead), so a fresh probe is answered while slow connections pile up. At most
  ``max_connections`` more are being answered; beyond, 503 at once.
- A connection must deliver its header within ``request_timeout`` (idle or trickling clients
  are closed then), and a response write that blocks longer than that is abandoned.
- A new connection is closed at once when the process's descriptors come within a reserve of
  ``RLIMIT_NOFILE`` (Linux hands out the lowest free descriptor, so a high number means that
  many are in use): whatever happens on this port, the gRPC port keeps descriptors to accept
  probes.
- Complete requests are answered by two small pools: one for the cheap paths, one for the
  ``limited_paths`` (/metrics) with at most ``METRICS_CONCURRENCY`` requests in flight (more
  are answered 503 at once), so a /metrics flood never delays /readyz.

What each path answers is the caller's ``route`` (:mod:`sidecar.publish.http`): it gets a
:class:`RequestHandler` and calls :meth:`RequestHandler.respond`. One request per connection,
closed after the response.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import io
import logging
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sidecar.core.errors import BindError

# the HTTP publisher's logger: these lines were always logged under its name
log = logging.getLogger("sidecar.publish.http")

MAX_HEADER_BYTES = 16 * 1024  # a request header larger than this is closed (health GETs are tiny)
METRICS_CONCURRENCY = 2  # /metrics scrapes rendered at a time; more are answered 503
SNAPSHOT_THREADS = 2
FD_RESERVE = 128  # descriptors kept free for the gRPC port and the rest of the process
_LOG_LINE_MAX = 200
_ACCEPT_BATCH = 64
_CLOSE_REASONS = ("evicted", "timeout", "fd_reserve", "busy", "header_too_large")


class _SocketWriter(io.BufferedIOBase):
    """wfile for a handler: every write is a ``sendall`` (bounded by the socket timeout)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._sock.sendall(b)
        return len(b)


class _Pending:
    """A connection whose request header is still arriving (owned by the selector thread)."""

    __slots__ = ("addr", "buf", "deadline", "sock")

    def __init__(self, sock: socket.socket, addr: Any, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.deadline = deadline
        self.buf = bytearray()


class HttpStats:
    """Connection counters of the HTTP port, exported as metrics."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed: dict[str, int] = dict.fromkeys(_CLOSE_REASONS, 0)
        self.pending = 0
        self.in_flight = 0

    def close(self, reason: str) -> None:
        with self.lock:
            self.closed[reason] += 1


class _HttpCollector(Collector):
    def __init__(self, stats: HttpStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Any]:
        s = self._stats
        yield GaugeMetricFamily(
            "trt_health_http_connections",
            "Open connections on the HTTP port (header arriving or being answered)",
            value=s.pending + s.in_flight,
        )
        closed = CounterMetricFamily(
            "trt_health_http_connections_closed",
            "HTTP connections the server closed without serving them, by reason (busy: answered "
            "503 at once; evicted, timeout, fd_reserve, header_too_large: closed)",
            labels=["reason"],
        )
        with s.lock:
            for reason, n in s.closed.items():
                closed.add_metric([reason], n)
        yield closed


def _fd_soft_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY and soft > 0 else 1 << 20


class RequestHandler(BaseHTTPRequestHandler):
    """One complete request (its header already read by the selector thread), answered on a
    worker thread; the server's ``route`` calls :meth:`respond`."""

    server_version = "trt-health-sidecar"

    def __init__(
        self,
        request: tuple[socket.socket, bytes],
        client_address: Any,
        server: BoundedHttpServer,
        route: Callable[[RequestHandler], None],
    ) -> None:
        self._route = route  # before the base class answers the request inside __init__
        super().__init__(request, client_address, server)  # type: ignore[arg-type]

    def setup(self) -> None:
        sock, data = self.request
        self.connection = sock
        self.rfile = io.BytesIO(data)
        self.wfile = _SocketWriter(sock)

    def finish(self) -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http request", extra={"line": (format % args)[:_LOG_LINE_MAX]})

    def respond(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._route(self)

    def do_HEAD(self) -> None:
        self._route(self)


class BoundedHttpServer:
    """The listener, its selector thread and the two answering pools (see the module doc)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        route: Callable[[RequestHandler], None],
        *,
        limited_paths: frozenset[bytes] = frozenset({b"/metrics"}),
        max_connections: int = 256,
        request_timeout_s: float = 5.0,
        fd_reserve: int = FD_RESERVE,
    ) -> None:
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self._fd_reserve = fd_reserve
        self._limited_paths = limited_paths
        self.stats = HttpStats()
        registry.register(_HttpCollector(self.stats))
        self._route = route
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._listener = socket.socket(family, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host.strip("[]"), port))
            self._listener.listen(128)
        except OSError as exc:
            self._listener.close()
            raise BindError(f"http {host}:{port}: {exc.strerror or exc}") from exc
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._pending: collections.OrderedDict[socket.socket, _Pending] = collections.OrderedDict()
        self._metrics_in_flight = 0
        self._snapshot_pool = ThreadPoolExecutor(SNAPSHOT_THREADS, thread_name_prefix="http-snapshot")
        self._metrics_pool = ThreadPoolExecutor(METRICS_CONCURRENCY, thread_name_prefix="http-metrics")
        self._stop = threading.Event()
        self._accept_paused_until = 0.0
        self._thread = threading.Thread(target=self._run, name="http-publisher", daemon=True)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    # -- selector thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = 0.5
            if self._pending:
                first = next(iter(self._pending.values()))
                timeout = max(0.0, min(timeout, first.deadline - now))
            if self._accept_paused_until > now:
                timeout = min(timeout, self._accept_paused_until - now)
            try:
                events = self._selector.select(timeout)
            except OSError:  # pragma: no cover - EINTR is retried by selectors
                continue
            # headers first, then new connections: a request that arrived is answered before
            # a newcomer can push it out
            events.sort(key=lambda e: e[0].fileobj is self._listener)
            for key, _ in events:
                if key.fileobj is self._listener:
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    self._read(key.data)
            self._reap(time.monotonic())
            if self._accept_paused_until and time.monotonic() >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.register(self._listener, selectors.EVENT_READ, None)
        for p in list(self._pending.values()):
            self._drop(p, None)

    def _fd_ceiling(self) -> int:
        """Descriptor numbers from here on are refused (the limit is read each time: it can be
        changed from outside with prlimit). A small limit is never reserved whole."""
        limit = _fd_soft_limit()
        return limit - min(self._fd_reserve, limit // 4)

    def _accept(self) -> None:
        ceiling = self._fd_ceiling()
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors: stop accepting for a moment instead of spinning
                    self._pause_accept()
                return
            if sock.fileno() >= ceiling:
                self.stats.close("fd_reserve")
                sock.close()
                self._pause_accept()
                return
            if len(self._pending) >= self.max_connections:
                self._make_room()
            sock.setblocking(False)
            p = _Pending(sock, addr, time.monotonic() + self.request_timeout_s)
            self._pending[sock] = p
            self.stats.pending = len(self._pending)
            self._selector.register(sock, selectors.EVENT_READ, p)

    def _make_room(self) -> None:
        """Free a slot: the oldest connection gets a last read (a header that arrived while
        the selector was busy accepting is answered, not evicted); if it is still incomplete,
        it is the slowest client and is closed."""
        oldest = next(iter(self._pending.values()))
        self._read(oldest)
        if oldest.sock in self._pending:
            self._drop(oldest, "evicted")

    def _pause_accept(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(self._listener)
        self._accept_paused_until = time.monotonic() + 0.05

    def _drop(self, p: _Pending, reason: str | None) -> None:
        self._forget(p)
        if reason is not None:
            self.stats.close(reason)
        p.sock.close()

    def _forget(self, p: _Pending) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(p.sock)
        self._pending.pop(p.sock, None)
        self.stats.pending = len(self._pending)

    def _reap(self, now: float) -> None:
        while self._pending:
            first = next(iter(self._pending.values()))
            if first.deadline > now:
                return
            self._drop(first, "timeout")

    def _read(self, p: _Pending) -> None:
        try:
            data = p.sock.recv(MAX_HEADER_BYTES + 1 - len(p.buf))
        except BlockingIOError:
            return
        except OSError:
            self._drop(p, None)
            return
        if not data:  # the client went away before sending a whole header
            self._drop(p, None)
            return
        p.buf += data
        end = p.buf.find(b"\r\n\r\n")
        if end < 0:
            end = p.buf.find(b"\n\n")
        if end < 0:
            if len(p.buf) > MAX_HEADER_BYTES:
                self._drop(p, "header_too_large")
            return
        self._forget(p)
        self._dispatch(p)

    def _dispatch(self, p: _Pending) -> None:
        line = bytes(p.buf[: p.buf.find(b"\n")]).split()
        path = line[1].split(b"?", 1)[0] if len(line) > 1 else b""
        metrics = path in self._limited_paths
        with self.stats.lock:
            if metrics:
                busy = self._metrics_in_flight >= METRICS_CONCURRENCY
            else:
                busy = self.stats.in_flight - self._metrics_in_flight >= self.max_connections
            if not busy:
                self.stats.in_flight += 1
                self._metrics_in_flight += metrics
        if busy:
            self.stats.close("busy")
            self._answer_busy(p.sock)
            return
        pool = self._metrics_pool if metrics else self._snapshot_pool
        try:
            pool.submit(self._serve, p, metrics)
        except RuntimeError:  # shutting down
            self._done(metrics)
            p.sock.close()

    def _answer_busy(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # a fresh socket's send buffer takes this at once
            sock.send(
                b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                b"Content-Length: 18\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
                b"too many requests\n"
            )
        sock.close()

    def _done(self, metrics: bool) -> None:
        with self.stats.lock:
            self.stats.in_flight -= 1
            if metrics:
                self._metrics_in_flight -= 1

    # -- worker threads -------------------------------------------------------------------
    def _serve(self, p: _Pending, metrics: bool) -> None:
        try:
            p.sock.setblocking(True)
            p.sock.settimeout(self.request_timeout_s)  # a write blocked longer is abandoned
            RequestHandler((p.sock, bytes(p.buf)), p.addr, self, self._route)
        except Exception as exc:  # a client that went away mid-answer is simply over
            log.debug("http answer failed", extra={"error": type(exc).__name__})
        finally:
            p.sock.close()
            self._done(metrics)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(5)
        self._snapshot_pool.shutdown(wait=False, cancel_futures=True)
        self._metrics_pool.shutdown(wait=False, cancel_futures=True)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
