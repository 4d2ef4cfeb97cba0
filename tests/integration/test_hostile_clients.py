"""Hostile clients against a real `serve --simulate` process, with a kubelet-style probe running
throughout: a Watch flood past the cap, idle and half-open connections, garbage bytes, oversized
metadata and messages. The probe (fresh connection, 1 s budget for dial + Check, ten a second)
must never fail. The benchmark (bench/hostile.py) reports the same probe under 5,000 streams."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.testing import wait_until
from sidecar.testing.hostile import Prober, metric, percentile

from .conftest import REPO, SidecarProcess

MAX_WATCHERS = 1000
FLOOD = 2000
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture
def hostile_sidecar(tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]) -> Iterator[SidecarProcess]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"grpc:\n  max_watchers: {MAX_WATCHERS}\n")
    yield sidecar_proc("--simulate", "--config", str(cfg))


def raw_connections(port: int, n: int, payload: bytes | None) -> list[socket.socket]:
    """n TCP connections that send ``payload`` (or nothing) and then stay silent and open."""
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        if payload:
            s.sendall(payload)
        out.append(s)
    return out


def test_hostile_clients_never_starve_the_probe(hostile_sidecar: SidecarProcess) -> None:
    """Under a Watch flood, idle/half-open/garbage connections and oversized requests, the cap
    holds, each bad request is refused, the server lives, and every kubelet-style probe passes."""
    sp = hostile_sidecar
    socks: list[socket.socket] = []
    flood: subprocess.Popen[str] | None = None
    with Prober(sp.addr) as prober:
        try:
            # 1. Watch flood from another process: 2,000 streams against a cap of 1,000
            flood = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.loadgen",
                    "watch",
                    f"-addr={sp.addr}",
                    f"-streams={FLOOD}",
                    "-conns=8",
                    "-ramp=400",
                    "-hold=120s",
                    "-service=readiness",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=dict(os.environ, PYTHONPATH=str(REPO)),
            )
            assert flood.stdout is not None
            opened = json.loads(flood.stdout.readline() or "{}")
            assert opened.get("opened") == MAX_WATCHERS, opened
            assert opened.get("refused") == FLOOD - MAX_WATCHERS, opened
            assert metric(sp.http_port, "trt_health_watch_streams") == MAX_WATCHERS
            # 2. idle TCP connections, half-open HTTP/2 (preface only), garbage bytes
            socks += raw_connections(sp.grpc_port, 200, None)
            socks += raw_connections(sp.grpc_port, 100, H2_PREFACE)
            socks += raw_connections(sp.grpc_port, 50, os.urandom(4096))
            socks += raw_connections(sp.grpc_port, 20, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            socks += raw_connections(sp.grpc_port, 20, H2_PREFACE + os.urandom(65536))
            # 3. oversized metadata and messages are refused, one by one
            with grpc.insecure_channel(sp.addr) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                with pytest.raises(grpc.RpcError):
                    stub.Check(
                        health_pb2.HealthCheckRequest(service="liveness"),
                        timeout=5,
                        metadata=(("x-big", "a" * 100_000),),
                    )
                with pytest.raises(grpc.RpcError) as big:
                    stub.Check(health_pb2.HealthCheckRequest(service="x" * 1_000_000), timeout=5)
                assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                with pytest.raises(grpc.RpcError) as long_name:
                    stub.Check(health_pb2.HealthCheckRequest(service="x" * 5_000), timeout=5)
                assert long_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                with pytest.raises(grpc.RpcError) as garbage:
                    ch.unary_unary("/grpc.health.v1.Health/Check")(b"\xff\xff\xff\xff", timeout=5)
                assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # keep the hostile state a little longer (3 s at least) under >= 40 probes
            deadline = time.monotonic() + 3
            wait_until(
                lambda: time.monotonic() >= deadline and len(prober.results) >= 40,
                timeout=60,
                interval=0.1,
                what="40 probes under attack",
            )
        finally:
            for s in socks:
                s.close()
            if flood is not None:
                flood.terminate()
                flood.wait(15)
    assert sp.proc.poll() is None, "the sidecar died"
    latencies = [t for t, why in prober.results if not why]
    failures = [why for _, why in prober.results if why]
    p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
    print(
        f"\nkubelet-style probes: {len(prober.results)}, failed {len(failures)}, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )
    assert not failures, failures[:5]
    assert len(prober.results) >= 40
    assert p99 < 1000
    # after the flood is gone the cap is free again
    wait_until(
        lambda: metric(sp.http_port, "trt_health_watch_streams") == 0,
        timeout=10,
        interval=0.1,
        what="Watch streams released",
    )
