"""The http-ready workload probe GETs exactly the configured URL: found by the image e2e test,
whose stand-in inference server (like Triton's /v2/health/ready route) answers only that path;
httpx's base_url used to add a trailing slash (GET /v2/health/ready/ -> 404, readiness never on)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sidecar.config import Section
from sidecar.workload.config import parse_workload_config
from sidecar.workload.probes import make_probe


class ExactPathServer:
    """200 on READY_PATH only, 404 on anything else (a trailing slash included)."""

    READY_PATH = "/v2/health/ready"

    def __init__(self) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(200 if self.path == outer.READY_PATH else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ExactPathServer]:
    srv = ExactPathServer()
    yield srv
    srv.close()


@pytest.mark.parametrize(
    ("url", "ready_path"),
    [
        ("{base}/v2/health/ready", ""),
        ("{base}/v2/health/ready/", ""),  # a trailing slash in the config is trimmed
        ("{base}/v2/health", "/ready"),
        ("{base}", "/v2/health/ready"),
    ],
)
async def test_http_ready_gets_exactly_the_configured_url(
    server: ExactPathServer, url: str, ready_path: str
) -> None:
    errors: list[str] = []
    raw: dict[str, Any] = {"enabled": True, "kind": "http-ready", "url": url.format(base=server.base)}
    if ready_path:
        raw["ready_path"] = ready_path
    cfg = parse_workload_config(Section(raw, "workload", errors))
    assert errors == []
    probe = make_probe(cfg)
    try:
        outcome = await probe.probe()
    finally:
        await probe.close()
    assert server.paths == [ExactPathServer.READY_PATH]
    assert outcome.ok, outcome
