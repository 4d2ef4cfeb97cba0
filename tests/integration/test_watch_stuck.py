"""A Watch client that stops reading cannot hold a sender thread forever, nor delay others."""

from __future__ import annotations

import itertools
import socket
from concurrent.futures import ThreadPoolExecutor

import grpc
import h2.config
import h2.connection
import h2.settings
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.publish.grpc_health import NOT_SERVING, SERVING, HealthRegistry, HealthService
from sidecar.testing import wait_until


def open_non_reading_watch(port: int, service: str) -> socket.socket:
    """A raw HTTP/2 client that opens a Watch with a 16-byte stream window and then never
    reads: the server can send one message, and its next send blocks."""
    sock = socket.create_connection(("127.0.0.1", port))
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16})
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/grpc.health.v1.Health/Watch"),
            (":authority", f"127.0.0.1:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ],
    )
    msg = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    conn.send_data(sid, b"\x00" + len(msg).to_bytes(4, "big") + msg, end_stream=True)
    sock.sendall(conn.data_to_send())
    return sock


def test_stuck_reader_is_cancelled_and_others_keep_receiving() -> None:
    """A stream whose client stopped reading blocks its send; the reaper cancels it after
    stuck_send_s, which frees the (single) sender thread for the other watchers."""
    registry = HealthRegistry()
    registry.set_statuses({"svc": SERVING})
    service = HealthService(registry, sender_threads=1, stuck_send_s=0.5)
    server = grpc.server(ThreadPoolExecutor(max_workers=4), handlers=(service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sock = open_non_reading_watch(port, "svc")
    try:
        wait_until(lambda: service.stats.watchers_open == 1)
        flips = itertools.cycle((NOT_SERVING, SERVING))

        def reaped() -> bool:
            # keep changing the status (more than its window holds) until the reaper acted
            registry.set_statuses({"svc": next(flips)})
            return service.stats.watch_stuck_cancelled == 1

        wait_until(reaped, timeout=10, interval=0.05)
        registry.set_statuses({"svc": NOT_SERVING})
        wait_until(lambda: service.stats.watchers_open == 0, timeout=5)
        # the single sender thread is free again: a new watcher gets its status and a change
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            live = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service="svc"))
            assert next(live).status == NOT_SERVING
            registry.set_statuses({"svc": SERVING})
            assert next(live).status == SERVING
            live.cancel()
    finally:
        sock.close()
        service.sender.shutdown(1.0)
        server.stop(0)
