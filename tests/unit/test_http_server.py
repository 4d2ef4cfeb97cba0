"""The bounded HTTP server core on its own, with a route of the test's: the limited paths
(/metrics) have their own small pool, so more of them than it takes are answered 503 at once
while the cheap paths keep answering."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry

from sidecar.publish.http_server import METRICS_CONCURRENCY, BoundedHttpServer, RequestHandler
from sidecar.testing import wait_until


class Route:
    def __init__(self) -> None:
        self.release = threading.Event()

    def __call__(self, req: RequestHandler) -> None:
        if req.path == "/slow":
            self.release.wait(30)
        req.respond(200, f"answered {req.path}\n".encode(), "text/plain")


@pytest.fixture
def served() -> Iterator[tuple[BoundedHttpServer, Route]]:
    route = Route()
    server = BoundedHttpServer(
        "127.0.0.1", 0, CollectorRegistry(), route, limited_paths=frozenset({b"/slow"})
    )
    server.start()
    try:
        yield server, route
    finally:
        route.release.set()
        server.stop()


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_limited_paths_beyond_their_pool_are_busy_while_others_answer(
    served: tuple[BoundedHttpServer, Route],
) -> None:
    server, route = served
    with ThreadPoolExecutor(METRICS_CONCURRENCY) as clients:
        held = [clients.submit(get, server.port, "/slow") for _ in range(METRICS_CONCURRENCY)]
        wait_until(lambda: server.stats.in_flight == METRICS_CONCURRENCY, what="limited pool full")
        assert get(server.port, "/slow") == (503, b"too many requests\n")
        assert server.stats.closed["busy"] == 1
        assert get(server.port, "/fast?x=1") == (200, b"answered /fast?x=1\n")
        route.release.set()
        assert [f.result(10) for f in held] == [(200, b"answered /slow\n")] * METRICS_CONCURRENCY


def test_head_gets_the_headers_only(served: tuple[BoundedHttpServer, Route]) -> None:
    server, _ = served
    assert get(server.port, "/fast", "HEAD") == (200, b"")
