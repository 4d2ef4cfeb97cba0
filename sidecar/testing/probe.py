"""Helpers for the `probe` integration tests: a real grpc.health.v1 server and test certificates.

``start_health_server`` uses the stock ``grpc_health.v1.health.HealthServicer`` for now; it can be
swapped for the sidecar's own server later without touching the tests (they only use ``port``,
``target``, ``servicer.set(...)`` and ``recorder``).
"""

from __future__ import annotations

import datetime
import ipaddress
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
CHECK_METHOD = "/grpc.health.v1.Health/Check"


@dataclass
class CallRecorder:
    """Metadata of every call the server received, recorded by a server interceptor."""

    calls: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self) -> list[tuple[str, str]]:
        """(key, value) pairs of the latest call, in the order received."""
        with self.lock:
            return list(self.calls[-1][1]) if self.calls else []

    def values(self, key: str) -> list[str]:
        """Every value of ``key`` in the latest call."""
        return [v for k, v in self.last() if k == key]


class _Recording(grpc.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, recorder: CallRecorder) -> None:
        self._recorder = recorder

    def intercept_service(self, continuation: Callable[..., Any], details: Any) -> Any:
        md = [(k, v) for k, v in details.invocation_metadata or ()]
        with self._recorder.lock:
            self._recorder.calls.append((details.method, md))
        return continuation(details)


@dataclass
class HealthServer:
    """A running server: ``target`` is what to pass to ``-addr``."""

    server: grpc.Server
    port: int
    target: str
    servicer: health.HealthServicer | None
    recorder: CallRecorder
    release: threading.Event  # set to let a slow handler return

    def stop(self) -> None:
        self.release.set()
        self.server.stop(grace=None)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a server (and optionally a client) certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here (the "wrong CA")
    self_signed_cert: Path
    self_signed_key: Path
    expired_cert: Path  # self-signed for 127.0.0.1, expired yesterday
    expired_key: Path


def start_health_server(
    statuses: dict[str, int] | None = None,
    *,
    with_health: bool = True,
    slow_check_s: float | None = None,
    unix_path: Path | None = None,
    server_credentials: grpc.ServerCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> HealthServer:
    """Start a grpc server on 127.0.0.1:0 (or a Unix socket) and return its handle.

    ``statuses`` go into the stock HealthServicer (it also answers ``""`` SERVING unless told
    otherwise); ``with_health=False`` registers no health service at all; ``slow_check_s`` makes
    Check sleep that long (or until ``release`` is set) before answering SERVING.
    """
    recorder = CallRecorder()
    release = threading.Event()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        interceptors=[_Recording(recorder)],
        options=list(options),
    )
    servicer: health.HealthServicer | None = None
    if slow_check_s is not None:

        def slow_check(request: Any, context: Any) -> Any:
            release.wait(slow_check_s)
            return health_pb2.HealthCheckResponse(status=SERVING)

        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health",
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    slow_check,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                )
            },
        )
        server.add_generic_rpc_handlers((handler,))
    elif with_health:
        servicer = health.HealthServicer()
        for name, status in (statuses or {}).items():
            servicer.set(name, status)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if unix_path is not None:
        address = f"unix://{unix_path}"
        bound = server.add_insecure_port(address)
        target = f"unix://{unix_path}"
    elif server_credentials is not None:
        bound = server.add_secure_port("127.0.0.1:0", server_credentials)
        target = f"127.0.0.1:{bound}"
    else:
        bound = server.add_insecure_port("127.0.0.1:0")
        target = f"127.0.0.1:{bound}"
    if bound == 0:
        raise RuntimeError("could not bind the test server")
    server.start()
    return HealthServer(server, bound, target, servicer, recorder, release)


# --------------------------------------------------------------------------- certificates


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    dns: Iterable[str] = (),
    ips: Iterable[str] = (),
    client: bool = False,
    expired: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        now -= datetime.timedelta(days=2)
    issuer_name = issuer[0].subject if issuer else _name(subject)
    signing_key = issuer[1] if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def leaf_der(dns: Iterable[str], ips: Iterable[str], cn: str) -> bytes:
    """A self-signed leaf certificate (DER) with these DNS / IP SANs and subject CN."""
    key = _key()
    return _cert(cn, key, None, dns=dns, ips=ips).public_bytes(serialization.Encoding.DER)


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA; a server cert for DNS ``sidecar.test`` only (so the name must be overridden);
    a client cert from the same CA; an unrelated CA; self-signed certs for 127.0.0.1 (one
    valid, one expired)."""
    ca_key = _key()
    ca = _cert("probe-test-ca", ca_key, None, ca=True)
    server_key = _key()
    server = _cert("sidecar.test", server_key, (ca, ca_key), dns=["sidecar.test"])
    client_key = _key()
    client = _cert("probe-client", client_key, (ca, ca_key), client=True)
    other_key = _key()
    other = _cert("unrelated-ca", other_key, None, ca=True)
    self_key = _key()
    self_signed = _cert("self-signed", self_key, None, ips=["127.0.0.1"], dns=["localhost"])
    _write(directory / "ca.pem", ca, None)
    _write(directory / "server.pem", server, server_key)
    _write(directory / "client.pem", client, client_key)
    _write(directory / "other-ca.pem", other, None)
    _write(directory / "self.pem", self_signed, self_key)
    expired_key = _key()
    expired = _cert("expired", expired_key, None, ips=["127.0.0.1"], expired=True)
    _write(directory / "expired.pem", expired, expired_key)
    return TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.pem",
        self_signed_cert=directory / "self.pem",
        self_signed_key=directory / "self.key",
        expired_cert=directory / "expired.pem",
        expired_key=directory / "expired.key",
    )


def server_credentials(cert: Path, key: Path, *, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca`` the server requires a client certificate."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )


def probe_command(*args: str) -> list[str]:
    """The probe as a real subprocess: ``python -m sidecar.probe ARGS``."""
    return [sys.executable, "-m", "sidecar.probe", *args]
