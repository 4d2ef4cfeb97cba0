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

The parts: the verdict store and its Watch streams (:mod:`sidecar.publish.health_store`), the
Watch sender threads (:mod:`sidecar.publish.watch_sender`), the server's RPC pool
(:mod:`sidecar.publish.rpc_executor`); this module is the servicer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from sidecar.publish.health_store import (
    NOT_SERVING,
    RESPONSE_BYTES,
    SERVICE_UNKNOWN,
    SERVING,
    UNKNOWN,
    HealthRegistry,
    Watcher,
)
from sidecar.publish.watch_sender import RpcStats, WatchSender

SERVICE_NAME = "grpc.health.v1.Health"

_NAME_CACHE_MAX = 1024  # request bytes -> service name; bounded against hostile names


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
        return RESPONSE_BYTES[status]  # type: ignore[index]

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


__all__ = [
    "NOT_SERVING",
    "SERVICE_NAME",
    "SERVICE_UNKNOWN",
    "SERVING",
    "UNKNOWN",
    "HealthRegistry",
    "HealthService",
    "RpcStats",
]
