"""Config-reload test support: a small sidecar config, its flag-style overrides, and a Watch
stream recorder (shared by the reload, no-blink, failure and loop tests), and the rejected-reload
count a running sidecar's /metrics shows."""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

BASE: dict[str, Any] = {
    "simulate": True,
    "grpc": {"host": "127.0.0.1", "port": 0},
    "http": {"host": "127.0.0.1", "port": 0},
    "gpu": {"poll_interval": "0.2s"},
    "canary": {"interval": "1s", "timeout": "1s", "first_timeout": "3s", "load_timeout": "3s"},
}

REJECTED = 'trt_health_config_reloads_total{result="rejected"}'


def reloads_rejected(http_base: str) -> float:
    """The rejected config reloads the sidecar at ``http_base`` counts on /metrics (0 before
    the first)."""
    with urllib.request.urlopen(f"{http_base}/metrics", timeout=5) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(REJECTED + " "):
            return float(line.split()[-1])
    return 0.0


def overrides(doc: dict[str, Any], state: Path) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {("state_dir",): str(state)}
    for section, body in doc.items():
        if isinstance(body, dict):
            for key, value in body.items():
                out[(section, key)] = value
        else:
            out[(section,)] = body
    return out


class Watcher:
    """Every status a Watch stream on one service is sent."""

    def __init__(self, addr: str, service: str) -> None:
        self.channel = grpc.insecure_channel(addr)
        stub = health_pb2_grpc.HealthStub(self.channel)
        self.seen: list[int] = []
        self._stream = stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for resp in self._stream:
                self.seen.append(int(resp.status))
        except grpc.RpcError:
            pass

    def close(self) -> None:
        self._stream.cancel()
        self.channel.close()
        self._thread.join(5)
