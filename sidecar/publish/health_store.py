"""The verdict store of grpc.health.v1: service name -> wire status, and the open Watch streams.

The event loop writes statuses (:meth:`HealthRegistry.publish`, a
:class:`~sidecar.core.protocols.Publisher`); RPC threads read them. A status that changes wakes
the streams watching that service through the :class:`~sidecar.publish.watch_sender.WatchSender`
(which sends the newest status, latest-wins). Services are never silently removed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from grpc_health.v1 import health_pb2

from sidecar.core.protocols import Publication

if TYPE_CHECKING:
    from sidecar.publish.watch_sender import WatchSender

_Status = health_pb2.HealthCheckResponse.ServingStatus
SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
UNKNOWN: int = health_pb2.HealthCheckResponse.UNKNOWN

# Pre-serialised responses, one per status: Check and Watch never encode protobuf.
RESPONSE_BYTES: dict[int, bytes] = {
    s: health_pb2.HealthCheckResponse(status=s).SerializeToString()
    for s in (UNKNOWN, SERVING, NOT_SERVING, SERVICE_UNKNOWN)
}


def status_name(status: int) -> str:
    return str(_Status.Name(status))


def to_wire_statuses(serving: Mapping[str, bool]) -> dict[str, int]:
    return {name: SERVING if ok else NOT_SERVING for name, ok in serving.items()}


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
