"""Kubelet-style probing and /metrics scraping for the hostile-client tests against a real sidecar."""

from __future__ import annotations

import threading
import time
import urllib.request
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.testing.probe import SERVING


def probe(addr: str, budget: float = 1.0) -> tuple[float, str]:
    """One kubelet-style probe: new channel, dial + Check within ``budget``; ("" = SERVING)."""
    t0 = time.perf_counter()
    try:
        with grpc.insecure_channel(addr, options=[("grpc.enable_http_proxy", 0)]) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="liveness"),
                timeout=budget,
                wait_for_ready=True,
            )
        why = "" if resp.status == SERVING else f"status {resp.status}"
    except grpc.RpcError as exc:
        why = str(exc.code())
    return time.perf_counter() - t0, why


class Prober:
    """Probes ten times a second on a thread until stopped."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.results: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.results.append(probe(self.addr))
            next_at += 0.1
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[int(p * (len(s) - 1))]


def metric(http_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")
