"""A fake Kubernetes API server for core/v1 Events (create and patch, bearer token, scripted
errors and delays), over HTTP or HTTPS (a :class:`~sidecar.testing.certs.TestCA`)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from sidecar.testing.certs import TestCA


@dataclass
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeApiServer:
    """Enough of the Kubernetes API for core/v1 Events: create and patch, with scripted errors,
    a per-request delay and a gate (clear ``gate`` and the API hangs until it is set again)."""

    def __init__(self, *, tls: TestCA | None = None) -> None:
        self.calls: list[Call] = []
        self.events: dict[str, dict[str, Any]] = {}
        self.fail_next: list[int] = []  # statuses to answer the next calls with
        self.delay_s = 0.0
        self.gate = threading.Event()  # cleared: every request waits (a hung API) until set
        self.gate.set()
        self.waiting = 0  # requests held at the gate now
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw) if raw else {}
                call = Call(self.command, self.path, dict(self.headers.items()), body)
                with outer.lock:
                    outer.waiting += 1
                outer.gate.wait(60)
                with outer.lock:
                    outer.waiting -= 1
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                with outer.lock:
                    outer.calls.append(call)
                    scripted = outer.fail_next.pop(0) if outer.fail_next else None
                if scripted is not None:
                    self._answer(scripted, {"kind": "Status", "code": scripted})
                    return
                parts = self.path.strip("/").split("/")
                if self.headers.get("Authorization", "")[:7] != "Bearer ":
                    self._answer(401, {"kind": "Status", "code": 401})
                elif (
                    self.command == "POST"
                    and parts[:3] == ["api", "v1", "namespaces"]
                    and (len(parts) == 5 and parts[4] == "events")
                ):
                    with outer.lock:
                        outer.events[body["metadata"]["name"]] = body
                    self._answer(201, body)
                elif self.command == "PATCH" and len(parts) == 6 and parts[4] == "events":
                    with outer.lock:
                        existing = outer.events.get(parts[5])
                        if existing is not None:
                            existing.update(body)
                    if existing is None:
                        self._answer(404, {"kind": "Status", "code": 404})
                    else:
                        self._answer(200, existing)
                else:
                    self._answer(405, {"kind": "Status", "code": 405})

            do_POST = _handle
            do_PATCH = _handle
            do_PUT = _handle
            do_GET = _handle
            do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            import ssl

            files = tls.issue("apiserver", sans=("localhost",))
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(files.cert), str(files.key))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def snapshot(self) -> list[Call]:
        with self.lock:
            return list(self.calls)
