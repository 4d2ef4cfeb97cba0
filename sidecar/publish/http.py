"""HTTP publisher on its own port: /healthz (JSON), /livez, /readyz, /metrics.

A stdlib ``ThreadingHTTPServer`` in a daemon thread: it reads an immutable snapshot that the
event loop swaps in after every change, so a slow HTTP client never touches the loop.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidecar.errors import BindError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HttpSnapshot:
    """What the HTTP endpoints serve; replaced as a whole on every change."""

    ready: bool = False
    live: bool = True
    body: bytes = b'{"status":"NOT_SERVING","checks":{}}'
    services: dict[str, bool] = field(default_factory=dict)


def healthz_document(
    service: str, ready: bool, services: dict[str, Any], checks: dict[str, Any]
) -> bytes:
    """The /healthz JSON: overall status, every service, every check with ok/reason/message."""
    doc = {
        "service": service,
        "status": "SERVING" if ready else "NOT_SERVING",
        "services": services,
        "checks": checks,
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode()


class HttpPublisher:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        snapshot: Callable[[], HttpSnapshot],
    ) -> None:
        self._registry = registry
        self._snapshot = snapshot
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "trt-health-sidecar"

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http request", extra={"line": format % args})

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                publisher.handle(self)

            def do_HEAD(self) -> None:
                publisher.handle(self)

        self.Handler = Handler
        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise BindError(f"http {host}:{port}: {exc.strerror or exc}") from exc
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="http-publisher", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def handle(self, req: Any) -> None:
        path = req.path.split("?", 1)[0]
        snap = self._snapshot()
        json_type = "application/json"
        if path == "/healthz":
            req._send(200 if snap.ready else 503, snap.body, json_type)
        elif path == "/readyz":
            req._send(
                200 if snap.ready else 503, b"ok\n" if snap.ready else b"not ready\n", "text/plain"
            )
        elif path == "/livez":
            req._send(
                200 if snap.live else 503, b"ok\n" if snap.live else b"not live\n", "text/plain"
            )
        elif path == "/metrics":
            req._send(200, generate_latest(self._registry), CONTENT_TYPE_LATEST)
        else:
            req._send(404, b"not found\n", "text/plain")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
