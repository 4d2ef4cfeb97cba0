"""grpc.health.v1 server on grpc.aio: Check, Watch and List, exactly as the spec says.

Why asyncio and not the stock servicers:

- the stock servicers start ``""`` as SERVING; here every service starts NOT_SERVING;
- the stock sync servicer ties a pool thread to each Watch stream, so watchers starve Check
  (the kubelet's only RPC) once the pool is taken; here a Watch is a coroutine parked on an
  ``asyncio.Event`` and costs no thread;
- Check answers from memory with pre-serialised response bytes (no protobuf encoding on the
  hot path) — see BENCHMARKS.md for the measured throughput against both stock servicers.

Watch semantics: the current status at once, then one message per change, latest-wins (a slow
reader is sent the newest status when it catches up, never a stale one as the last word),
duplicates suppressed, ``SERVICE_UNKNOWN`` for an unknown service with the stream kept open,
a cap on concurrent streams (``RESOURCE_EXHAUSTED`` beyond it), every stream ended with OK on
shutdown after it was sent NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

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


def status_name(status: int) -> str:
    return str(_Status.Name(status))


class RpcStats:
    """Plain counters on the hot path; exported to Prometheus by a collector."""

    __slots__ = ("calls", "watch_rejected", "watchers_open")

    def __init__(self) -> None:
        self.calls: dict[tuple[str, str], int] = {}
        self.watchers_open = 0
        self.watch_rejected = 0

    def count(self, method: str, code: str) -> None:
        key = (method, code)
        self.calls[key] = self.calls.get(key, 0) + 1


class _Watcher:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = asyncio.Event()


class HealthRegistry:
    """Service name -> status, with Watch fan-out. Lives on one event loop; ``set_statuses``
    must be called from that loop (the app does)."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {}
        self._watchers: dict[str, set[_Watcher]] = {}
        self.closed = False

    def get(self, service: str) -> int | None:
        return self._status.get(service)

    def snapshot(self) -> dict[str, int]:
        return dict(self._status)

    def set_statuses(self, statuses: Mapping[str, int]) -> None:
        """Apply a full verdict: changed services wake their watchers; services absent from
        ``statuses`` keep their last status (services are never silently removed)."""
        for service, status in statuses.items():
            if self._status.get(service) != status:
                self._status[service] = status
                for w in self._watchers.get(service, ()):
                    w.event.set()

    def remove(self, services: Iterable[str]) -> None:
        for service in services:
            if self._status.pop(service, None) is not None:
                for w in self._watchers.get(service, ()):
                    w.event.set()

    def add_watcher(self, service: str) -> _Watcher:
        w = _Watcher()
        self._watchers.setdefault(service, set()).add(w)
        return w

    def drop_watcher(self, service: str, w: _Watcher) -> None:
        ws = self._watchers.get(service)
        if ws is not None:
            ws.discard(w)
            if not ws:
                del self._watchers[service]

    def close(self) -> None:
        """End every Watch stream (shutdown)."""
        self.closed = True
        for ws in self._watchers.values():
            for w in ws:
                w.event.set()

    def watcher_count(self) -> int:
        return sum(len(ws) for ws in self._watchers.values())


class HealthService:
    """The grpc.health.v1.Health handlers on raw bytes (generic handler)."""

    def __init__(
        self,
        registry: HealthRegistry,
        *,
        max_watchers: int = 1000,
        list_max_services: int = 100,
        max_service_name_bytes: int = 1024,
        stats: RpcStats | None = None,
    ) -> None:
        self.registry = registry
        self.max_watchers = max_watchers
        self.list_max_services = list_max_services
        self.max_service_name_bytes = max_service_name_bytes
        self.stats = stats or RpcStats()
        self._watch_tasks: set[asyncio.Task[Any]] = set()

    def _service_name(self, request: bytes) -> str | None:
        """Decode HealthCheckRequest.service; None when malformed or too long."""
        if len(request) > self.max_service_name_bytes + 8:
            return None
        try:
            msg = health_pb2.HealthCheckRequest.FromString(request)
        except DecodeError:
            return None
        name = str(msg.service)
        if len(name.encode("utf-8")) > self.max_service_name_bytes:
            return None
        return name

    async def check(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        name = self._service_name(request)
        if name is None:
            self.stats.count("Check", "INVALID_ARGUMENT")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed request or service name over {self.max_service_name_bytes} bytes",
            )
        status = self.registry.get(name)  # type: ignore[arg-type]
        if status is None:
            self.stats.count("Check", "NOT_FOUND")
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        self.stats.count("Check", "OK")
        return _RESPONSE_BYTES[status]  # type: ignore[index]

    async def list(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            health_pb2.HealthListRequest.FromString(request)
        except DecodeError:
            self.stats.count("List", "INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed request")
        statuses = self.registry.snapshot()
        if len(statuses) > self.list_max_services:
            self.stats.count("List", "RESOURCE_EXHAUSTED")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(statuses)} services exceed the list limit of {self.list_max_services}",
            )
        resp = health_pb2.HealthListResponse()
        for service, status in statuses.items():
            resp.statuses[service].status = status
        self.stats.count("List", "OK")
        return bytes(resp.SerializeToString())

    async def watch(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        name = self._service_name(request)
        if name is None:
            self.stats.count("Watch", "INVALID_ARGUMENT")
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"malformed request or service name over {self.max_service_name_bytes} bytes",
            )
        assert name is not None
        if self.registry.closed:
            self.stats.count("Watch", "UNAVAILABLE")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "shutting down")
        if self.stats.watchers_open >= self.max_watchers:
            self.stats.watch_rejected += 1
            self.stats.count("Watch", "RESOURCE_EXHAUSTED")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many concurrent Watch streams (limit {self.max_watchers})",
            )
        self.stats.watchers_open += 1
        watcher = self.registry.add_watcher(name)
        last: int | None = None
        try:
            while True:
                status = self.registry.get(name)
                if status is None:
                    status = SERVICE_UNKNOWN
                if status != last:
                    # While this write waits on a slow reader, changes only set the event;
                    # the next loop reads the newest status (latest-wins, no queue).
                    await context.write(_RESPONSE_BYTES[status])
                    last = status
                    continue
                if self.registry.closed:
                    break
                await watcher.event.wait()
                watcher.event.clear()
        finally:
            self.registry.drop_watcher(name, watcher)
            self.stats.watchers_open -= 1
        self.stats.count("Watch", "OK")

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Check": grpc.unary_unary_rpc_method_handler(self.check),
                "List": grpc.unary_unary_rpc_method_handler(self.list),
                "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
            },
        )


def to_wire_statuses(serving: Mapping[str, bool]) -> dict[str, int]:
    return {name: SERVING if ok else NOT_SERVING for name, ok in serving.items()}


StatusSink = Callable[[Mapping[str, int]], None]
