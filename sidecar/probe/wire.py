"""The Check call: the two grpc.health.v1 messages in protobuf wire format, and one connect +
``Check`` on a grpcio channel, each phase failing with the Go tool's message and exit code.

``grpc`` is imported when a probe runs, not at load (``-version`` and flag errors stay fast).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sidecar.core.errors import (
    PROBE_CONNECTION_FAILURE,
    PROBE_OK,
    PROBE_RPC_FAILURE,
    PROBE_UNHEALTHY,
)
from sidecar.probe.flags import ProbeOptions
from sidecar.probe.gofmt import format_go_duration, format_ns, go_status_error
from sidecar.probe.interrupts import Cancelled, Interrupts
from sidecar.probe.tls import TlsMaterial, trust_presented

__all__ = [
    "CHECK_METHOD",
    "SERVING",
    "SERVING_STATUS_NAMES",
    "decode_check_response",
    "encode_check_request",
    "grpc_target",
    "run_check",
]

CHECK_METHOD = "/grpc.health.v1.Health/Check"

# grpc.health.v1 messages, encoded by hand: importing protobuf and the generated module costs about
# 20 ms, a sixth of a probe's wall time. A unit test checks these against grpc_health's health_pb2.
SERVING = 1
SERVING_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_check_request(service: str) -> bytes:
    """``HealthCheckRequest{service}`` in protobuf wire format (proto3 omits an empty string)."""
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def decode_check_response(data: bytes) -> int:
    """The ``status`` of a ``HealthCheckResponse`` (0 when absent); unknown fields skipped.

    Raises ``ValueError`` on malformed input (grpcio turns it into an INTERNAL error: exit 3).
    """
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field_no == 1:
                status = value - (1 << 64) if value >= 1 << 63 else value  # int32 enum
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
    return status


def grpc_target(addr: str) -> str:
    """grpc-go dials ``:port`` on the local host; grpc core needs the host spelled out."""
    if addr.startswith(":") and addr[1:].isdigit():
        return "localhost" + addr
    return addr


def run_check(
    opts: ProbeOptions,
    tls_parts: TlsMaterial | None,
    interrupts: Interrupts,
    log: Callable[[str], None],
    close_channel: bool,
) -> int:
    """Connect within ``-connect-timeout``, call Check once within ``-rpc-timeout``; log the Go
    tool's lines with ``log`` and return the exit code (``tls_parts`` is None for plaintext)."""
    import grpc

    target = grpc_target(opts.addr)
    options: list[tuple[str, Any]] = [
        ("grpc.primary_user_agent", opts.user_agent),
        ("grpc.enable_http_proxy", 0),  # see sidecar.probe's docstring (grpc_health_probe#153)
        ("grpc.enable_retries", 0),  # one Check, no retry, like the Go tool
    ]
    if opts.verbose:
        log("establishing connection")
    conn_start = time.perf_counter_ns()
    deadline = time.monotonic() + opts.connect_timeout
    channel = None
    try:
        interrupts.arm()
        if tls_parts is not None:
            roots, key, chain = tls_parts
            if opts.tls_no_verify:
                roots, name = trust_presented(opts, deadline)
                if name:
                    options.append(("grpc.ssl_target_name_override", name))
            elif opts.tls_server_name:
                options.append(("grpc.ssl_target_name_override", opts.tls_server_name))
            creds = grpc.ssl_channel_credentials(
                root_certificates=roots, private_key=key, certificate_chain=chain
            )
            channel = grpc.secure_channel(target, creds, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 0.001))
        interrupts.disarm()
    except (grpc.FutureTimeoutError, TimeoutError, OSError, ValueError):
        interrupts.disarm()
        log(
            f'timeout: failed to connect service "{opts.addr}" within '
            f"{format_go_duration(opts.connect_timeout)}"
        )
        _close(channel, close_channel)
        return PROBE_CONNECTION_FAILURE
    except Cancelled:
        log(f'error: failed to connect service at "{opts.addr}": context canceled')
        _close(channel, close_channel)
        return PROBE_CONNECTION_FAILURE
    conn_ns = time.perf_counter_ns() - conn_start
    if opts.verbose:
        log(f"connection established (took {format_ns(conn_ns)})")

    metadata = [(k.lower(), v.encode() if k.lower().endswith("-bin") else v) for k, v in opts.rpc_headers]
    check = channel.unary_unary(
        CHECK_METHOD,
        request_serializer=encode_check_request,
        response_deserializer=decode_check_response,
    )
    rpc_start = time.perf_counter_ns()
    call = None
    try:
        interrupts.arm()
        call = check.future(
            opts.service,
            timeout=opts.rpc_timeout,
            metadata=metadata or None,
            compression=grpc.Compression.Gzip if opts.gzip else None,
        )
        resp = call.result()
        interrupts.disarm()
    except Cancelled:
        if call is not None:
            call.cancel()
        log(f"error: health rpc failed: {go_status_error('CANCELLED', 'context canceled')}")
        _close(channel, close_channel)
        return PROBE_RPC_FAILURE
    except grpc.RpcError as exc:
        interrupts.disarm()
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else None) or ""
        if code == grpc.StatusCode.UNIMPLEMENTED:
            log(
                "error: this server does not implement the grpc health protocol "
                f"(grpc.health.v1.Health): {details}"
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            log(f"timeout: health rpc did not complete within {format_go_duration(opts.rpc_timeout)}")
        else:
            log(f"error: health rpc failed: {go_status_error(code.name, details)}")
        _close(channel, close_channel)
        return PROBE_RPC_FAILURE
    except (ValueError, TypeError) as exc:  # e.g. metadata grpcio refuses to send
        interrupts.disarm()
        log(f"error: health rpc failed: {go_status_error('INTERNAL', str(exc))}")
        _close(channel, close_channel)
        return PROBE_RPC_FAILURE
    rpc_ns = time.perf_counter_ns() - rpc_start
    _close(channel, close_channel)

    status_name = SERVING_STATUS_NAMES.get(resp, str(resp))
    if resp != SERVING:
        log(f'service unhealthy (responded with "{status_name}")')
        return PROBE_UNHEALTHY
    if opts.verbose:
        log(f"time elapsed: connect={format_ns(conn_ns)} rpc={format_ns(rpc_ns)}")
    log(f"status: {status_name}")
    return PROBE_OK


def _close(channel: Any, really: bool) -> None:
    if channel is not None and really:
        channel.close()
