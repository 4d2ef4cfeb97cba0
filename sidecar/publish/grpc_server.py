"""The gRPC server: grpc.health.v1, Diagnostics and reflection on the plaintext port, an
optional TLS / mTLS port and an optional Unix socket. Binding errors are :class:`BindError`
naming the address; unreadable TLS material is :class:`TlsMaterialError`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from sidecar.core.errors import BindError
from sidecar.proto import diagnostics_pb2_grpc
from sidecar.publish.diagnostics import DiagnosticsService
from sidecar.publish.grpc_health import SERVICE_NAME, HealthService
from sidecar.publish.rpc_executor import RpcExecutor
from sidecar.publish.tls import TlsCredentialsWatcher

if TYPE_CHECKING:
    from sidecar.config import GrpcConfig

GRPC_SERVER_OPTIONS: list[tuple[str, Any]] = [
    # A second sidecar (or anything else) on the same port must be an error, not a silent
    # share of the port.
    ("grpc.so_reuseport", 0),
    # Health messages are tiny; a huge request is refused by the transport.
    ("grpc.max_receive_message_length", 64 * 1024),
    ("grpc.max_send_message_length", 4 * 1024 * 1024),
    # Find dead Watch peers and idle connections, so hostile clients cannot hold resources.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_connection_idle_ms", 300_000),
]

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
DIAGNOSTICS_SERVICE = "trt_health.diagnostics.v1.Diagnostics"


@dataclass
class GrpcServer:
    """A started server and the ports it bound (``tls_port`` 0: no TLS listener)."""

    server: grpc.Server
    port: int
    tls_port: int = 0
    tls: TlsCredentialsWatcher | None = None  # re-reads the certificate files on change


def start_grpc_server(
    cfg: GrpcConfig,
    health_service: HealthService,
    diagnostics: DiagnosticsService,
    *,
    make_room: Callable[[str], None],
) -> GrpcServer:
    """Bind every configured listener and start serving. Raises BindError / TlsMaterialError
    (then nothing was started). ``make_room(path)`` clears the Unix socket's path first
    (raises BindError for anything there but a stale socket)."""
    # grpcio's sync server: Check/List answer on a small pool (no Watch ever holds one of
    # its threads, see publish/grpc_health.py); measured faster per core than grpc.aio.
    # Under a burst of thousands of Watch calls a probe's Check neither waits in Watch's
    # queue of unrequested calls (registered methods: one queue each in grpc-core) nor
    # behind their registrations in the pool (RpcExecutor): BENCHMARKS.md section 5b.
    pool = RpcExecutor(cfg.threads, thread_name_prefix="grpc-rpc")
    pool.background = health_service.watch_behavior
    server = grpc.server(
        pool,
        options=GRPC_SERVER_OPTIONS,
    )
    health_service.add_to_server(server)
    diagnostics_pb2_grpc.add_DiagnosticsServicer_to_server(diagnostics, server)
    if cfg.reflection:
        enable_reflection(server, (SERVICE_NAME, DIAGNOSTICS_SERVICE))
    address = f"{cfg.host}:{cfg.port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise BindError(f"grpc {address}: {exc}") from exc
    if port == 0:
        raise BindError(f"grpc {address}: cannot bind")
    if cfg.unix_socket:
        make_room(cfg.unix_socket)  # raises BindError for anything but a stale socket there
        try:
            server.add_insecure_port(f"unix:{cfg.unix_socket}")
        except RuntimeError as exc:
            raise BindError(f"grpc unix:{cfg.unix_socket}: {exc}") from exc
    bound = GrpcServer(server, port)
    if cfg.tls is not None:
        bound.tls = TlsCredentialsWatcher(
            cert_file=cfg.tls.cert_file,
            key_file=cfg.tls.key_file,
            client_ca_file=cfg.tls.client_ca_file,
            require_client_cert=cfg.tls.require_client_cert,
        )
        creds = bound.tls.server_credentials()  # raises TlsMaterialError
        tls_address = f"{cfg.host}:{cfg.tls.port}"
        try:
            bound.tls_port = server.add_secure_port(tls_address, creds)
        except RuntimeError as exc:
            raise BindError(f"grpc tls {tls_address}: {exc}") from exc
        if bound.tls_port == 0:
            raise BindError(f"grpc tls {tls_address}: cannot bind")
    server.start()
    return bound


def enable_reflection(server: grpc.Server, services: Sequence[str]) -> None:
    """Server reflection as grpc-go serves it: ``grpc.reflection.v1`` and ``v1alpha``.

    grpcio-reflection ships only v1alpha; v1's messages are wire-identical (the same
    fields and numbers), so its servicer answers under both service names."""
    from grpc_reflection.v1alpha import reflection, reflection_pb2

    servicer = reflection.ReflectionServicer((*services, reflection.SERVICE_NAME, REFLECTION_V1))
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": method})
            for name in (REFLECTION_V1, reflection.SERVICE_NAME)
        )
    )
