"""HTTP publisher on its own port: /healthz (JSON), /livez, /readyz, /metrics.

It reads an immutable snapshot that the app swaps in whole (the event loop after every change,
the loop watchdog while the loop is blocked, both under one lock), so a slow HTTP client never
touches the loop. The routes are here; the server under them, bounded against hostile clients
(threads, memory, descriptors), is :class:`~sidecar.publish.http_server.BoundedHttpServer`:
/metrics is answered by its own small pool with at most ``METRICS_CONCURRENCY`` scrapes in
flight, so a /metrics flood never delays /readyz.

HTTP/1.0 semantics: one request per connection, closed after the response.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.publish.http_server import FD_RESERVE, BoundedHttpServer, HttpStats, RequestHandler

METRICS_PATH = b"/metrics"


@dataclass(frozen=True)
class HttpSnapshot:
    """What the HTTP endpoints serve; replaced as a whole on every change."""

    ready: bool = False
    live: bool = True
    body: bytes = b'{"status":"NOT_SERVING","checks":{}}'
    services: dict[str, bool] = field(default_factory=dict)


def healthz_document(service: str, ready: bool, services: dict[str, Any], checks: dict[str, Any]) -> bytes:
    """The /healthz JSON: overall status, every service, every check with ok/reason/message."""
    doc = {
        "service": service,
        "status": "SERVING" if ready else "NOT_SERVING",
        "services": services,
        "checks": checks,
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


class HttpPublisher:
    """The routes over a :class:`BoundedHttpServer` (bound here; served from :meth:`start`)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        snapshot: Callable[[], HttpSnapshot],
        *,
        max_connections: int = 256,
        request_timeout_s: float = 5.0,
        fd_reserve: int = FD_RESERVE,
    ) -> None:
        self._registry = registry
        self._snapshot = snapshot
        self._server = BoundedHttpServer(
            host,
            port,
            registry,
            self.handle,
            limited_paths=frozenset({METRICS_PATH}),
            max_connections=max_connections,
            request_timeout_s=request_timeout_s,
            fd_reserve=fd_reserve,
        )

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def stats(self) -> HttpStats:
        return self._server.stats

    def handle(self, req: RequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        snap = self._snapshot()
        json_type = "application/json"
        if path == "/healthz":
            req.respond(200 if snap.ready else 503, snap.body, json_type)
        elif path == "/readyz":
            req.respond(200 if snap.ready else 503, b"ok\n" if snap.ready else b"not ready\n", "text/plain")
        elif path == "/livez":
            req.respond(200 if snap.live else 503, b"ok\n" if snap.live else b"not live\n", "text/plain")
        elif path == "/metrics":
            req.respond(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        else:
            req.respond(404, b"not found\n", "text/plain")

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
