"""TLS / mTLS listener on its own port (with certificate reload) and the HTTP endpoints."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import TlsConfig
from sidecar.core.values import CheckResult, Severity
from sidecar.testing.certs import TestCA

from .conftest import SERVING, AppThread, check


def tls_check(port: int, ca: Path, client: tuple[Path, Path] | None = None, service: str = "liveness") -> int:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    with grpc.secure_channel(f"localhost:{port}", creds) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=3).status)


def test_tls_on_separate_port_and_reload(make_app: Any, tmp_path: Path) -> None:
    """TLS serves on its own port, plaintext stays; a renewed certificate is used without restart."""
    ca = TestCA(tmp_path)
    server = ca.issue("server")
    app: AppThread = make_app(
        grpc_tls=TlsConfig(port=0, cert_file=str(server.cert), key_file=str(server.key))
    )
    assert app.app.grpc_tls_port not in (0, app.app.grpc_port)
    assert tls_check(app.app.grpc_tls_port, ca.ca_path) == SERVING
    assert check(app.addr, "liveness") == SERVING  # plaintext still there for the kubelet
    # rotate: a certificate from a new CA replaces the old files in place
    ca2 = TestCA(tmp_path, cn="second CA")
    new = ca2.issue("server2")
    stamps = {f: f.stat().st_mtime_ns for f in (server.cert, server.key)}
    server.cert.write_bytes(new.cert.read_bytes())
    server.key.write_bytes(new.key.read_bytes())
    for f, ns in stamps.items():  # a new mtime even within the clock's granularity
        os.utime(f, ns=(ns + 10**9, ns + 10**9))
    assert tls_check(app.app.grpc_tls_port, ca2.ca_path) == SERVING
    with pytest.raises(grpc.RpcError):
        tls_check(app.app.grpc_tls_port, ca.ca_path)


def test_mtls_requires_client_certificate(make_app: Any, tmp_path: Path) -> None:
    """With a client CA and require_client_cert, only clients with a valid certificate get in."""
    ca = TestCA(tmp_path)
    server = ca.issue("server")
    client = ca.issue("client", client=True)
    app: AppThread = make_app(
        grpc_tls=TlsConfig(
            port=0,
            cert_file=str(server.cert),
            key_file=str(server.key),
            client_ca_file=str(ca.ca_path),
            require_client_cert=True,
        )
    )
    assert tls_check(app.app.grpc_tls_port, ca.ca_path, (client.cert, client.key)) == SERVING
    with pytest.raises(grpc.RpcError):
        tls_check(app.app.grpc_tls_port, ca.ca_path)
    other = TestCA(tmp_path, cn="rogue CA").issue("rogue", client=True)
    with pytest.raises(grpc.RpcError):
        tls_check(app.app.grpc_tls_port, ca.ca_path, (other.cert, other.key))


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def test_http_endpoints(app: AppThread) -> None:
    """/healthz JSON, /readyz and /livez codes, and /metrics follow the verdict."""
    gates = frozenset({"readiness", "gpu"})
    app.submit(CheckResult.passed("gpu/GPU-1/ecc", gates=gates))
    code, body, ctype = _get(app.http_base + "/healthz")
    doc = json.loads(body)
    assert code == 200 and ctype == "application/json" and doc["status"] == "SERVING"
    assert doc["checks"]["gpu/GPU-1/ecc"]["ok"] is True
    assert _get(app.http_base + "/readyz")[0] == 200
    app.submit(
        CheckResult.failed("gpu/GPU-1/ecc", "EccUncorrectable", "boom", severity=Severity.FATAL, gates=gates)
    )
    code, body, _ = _get(app.http_base + "/healthz")
    doc = json.loads(body)
    assert code == 503 and doc["status"] == "NOT_SERVING"
    entry = doc["checks"]["gpu/GPU-1/ecc"]
    assert (entry["ok"], entry["reason"], entry["message"]) == (False, "EccUncorrectable", "boom")
    assert doc["services"]["readiness"]["reasons"] == ["gpu/GPU-1/ecc: EccUncorrectable"]
    assert _get(app.http_base + "/readyz")[0] == 503
    assert _get(app.http_base + "/livez")[0] == 200
    check(app.addr, "liveness")
    code, body, _ = _get(app.http_base + "/metrics")
    text = body.decode()
    assert code == 200
    assert 'trt_health_service_serving{service="readiness"} 0.0' in text
    assert 'trt_health_condition_gating{condition="gpu/GPU-1/ecc"} 1.0' in text
    assert 'trt_health_grpc_requests_total{code="OK",method="Check"}' in text
    assert "trt_health_transitions_total" in text
    assert _get(app.http_base + "/nope")[0] == 404


def test_condition_series_follows_severity_change(app: AppThread) -> None:
    """When a condition's severity changes, /metrics keeps one trt_health_condition_ok series
    for it (no stale series with the old severity that still says healthy)."""
    gates = frozenset({"readiness", "gpu"})
    app.submit(CheckResult.passed("gpu/GPU-1/lost", gates=gates))
    app.submit(CheckResult.failed("gpu/GPU-1/lost", "GpuLost", "gone", severity=Severity.FATAL, gates=gates))
    text = _get(app.http_base + "/metrics")[1].decode()
    series = [
        ln for ln in text.splitlines() if ln.startswith('trt_health_condition_ok{condition="gpu/GPU-1/lost"')
    ]
    assert series == ['trt_health_condition_ok{condition="gpu/GPU-1/lost",severity="fatal"} 0.0']
