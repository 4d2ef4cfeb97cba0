"""The HTTPS admission server: ``POST /mutate`` (AdmissionReview v1), ``GET /healthz``.

One thread per connection (the TLS handshake runs there, with the certificate current at that
moment); the serving certificate is re-read when its files change (cert-manager / kubelet secret
updates), through the package's :class:`~sidecar.publish.tls.CertificateReloader`. Every
decision is logged as one JSON line.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Any

from sidecar.core.errors import BindError, TlsMaterialError
from sidecar.publish.tls import CertificateReloader
from sidecar.webhook.admission import admission_response
from sidecar.webhook.options import WebhookOptions

__all__ = ["MAX_BODY_BYTES", "REQUEST_TIMEOUT_S", "WebhookServer", "server_context_builder"]

log = logging.getLogger("sidecar.webhook")  # one logger for the whole program, as before the split

MAX_BODY_BYTES = 16 * 1024 * 1024
REQUEST_TIMEOUT_S = 10.0


def server_context_builder(cert_path: Path, key_path: Path) -> Callable[[list[bytes]], ssl.SSLContext]:
    """What the reloader builds: a TLS 1.2+ server context with the certificate and key."""

    def build(_contents: list[bytes]) -> ssl.SSLContext:
        # ssl loads a chain only from files: the same files the reloader has just read
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(cert_path), str(key_path))
        except (OSError, ssl.SSLError) as exc:
            raise TlsMaterialError(
                f"cannot load TLS certificate {cert_path} / key {key_path}: {exc}"
            ) from exc
        return ctx

    return build


class _Handler(BaseHTTPRequestHandler):
    server: _TlsHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "trt-health-webhook"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in ("/healthz", "/readyz", "/livez"):
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] not in ("/mutate", "/"):
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            body = b""  # answered as malformed; the connection is not reused
            self.close_connection = True
        else:
            body = self.rfile.read(length)
        started = time.monotonic()
        try:
            review, decision = admission_response(body, self.server.options)
        except Exception:  # a bug must never drop the request unanswered
            log.exception("admission failed")
            review, decision = admission_response(b"", self.server.options)
        payload = json.dumps(review, separators=(",", ":")).encode()
        self._send(200, payload)
        log.info(
            "admission decision",
            extra={
                "uid": decision.uid,
                "decision": decision.action,
                "reason": decision.reason,
                "namespace": decision.namespace,
                "pod": decision.pod,
                "patch_ops": decision.patch_ops,
                "warnings": decision.warnings,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )


def _lingering_close(sock: ssl.SSLSocket, budget_s: float = 1.0) -> None:
    """Close after the peer has read our answer: send FIN, discard what it still sends (briefly).
    Closing with unread input makes the kernel send RST, which can destroy the answer in flight
    (e.g. after refusing an oversized body without reading it)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + budget_s
        sock.settimeout(0.2)
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


class _TlsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, options: WebhookOptions, certs: CertificateReloader[ssl.SSLContext]) -> None:
        self.options = options
        self.certs = certs
        if ":" in options.bind:
            self.address_family = socket.AF_INET6
        super().__init__((options.bind, options.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN (a DNS lookup); not needed here.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake here, in the per-connection thread, with the current certificate.
        request.settimeout(REQUEST_TIMEOUT_S)
        try:
            tls = self.certs.current.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", extra={"peer": str(client_address), "error": str(exc)})
            return
        try:
            _Handler(tls, client_address, self)
        except (ssl.SSLError, OSError) as exc:
            log.debug("connection error", extra={"peer": str(client_address), "error": str(exc)})
        finally:
            _lingering_close(tls)


class WebhookServer:
    """The HTTPS admission server; ``start()`` binds and returns, ``stop()`` shuts it down."""

    def __init__(self, options: WebhookOptions) -> None:
        self.options = options
        self.certs = CertificateReloader(
            [options.tls_cert, options.tls_key],
            server_context_builder(options.tls_cert, options.tls_key),
            logger=log,
        )
        self._httpd: _TlsHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        """Load the certificate and listen. Raises TlsMaterialError or BindError."""
        self.certs.load()
        try:
            self._httpd = _TlsHTTPServer(self.options, self.certs)
        except OSError as exc:
            raise BindError(f"cannot listen on {self.options.bind}:{self.options.port}: {exc}") from exc
        serve = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="webhook-http"
        )
        watch = threading.Thread(target=self._watch_certs, name="webhook-cert-watch", daemon=True)
        self._threads = [serve, watch]
        for t in self._threads:
            t.daemon = True
            t.start()
        log.info(
            "webhook listening",
            extra={"bind": self.options.bind, "port": self.port, "image": self.options.sidecar_image},
        )

    def _watch_certs(self) -> None:
        while not self._stop.wait(self.options.cert_reload_interval_s):
            try:
                self.certs.check()
            except Exception:  # the watcher must outlive any surprise
                log.exception("certificate check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)
