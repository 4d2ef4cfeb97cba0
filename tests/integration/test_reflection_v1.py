"""Server reflection speaks grpc.reflection.v1 as well as v1alpha, as grpc-go does
(issue #9 item 7): clients such as grpcurl ask v1 first."""

from __future__ import annotations

import grpc

from .conftest import AppThread

REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"

V1_METHOD = f"/{REFLECTION_V1}/ServerReflectionInfo"


def _ask(addr: str, method: str, **request: str) -> object:
    """One reflection request on ``method``; v1 and v1alpha messages are wire-identical, so
    the v1alpha classes encode a v1 request."""
    from grpc_reflection.v1alpha import reflection_pb2

    with grpc.insecure_channel(addr) as ch:
        call = ch.stream_stream(
            method,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        (resp,) = list(call(iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=5))
        return resp


def test_v1_reflection_lists_services_and_describes_health(app: AppThread) -> None:
    """A v1 client lists the health, diagnostics and both reflection services, and gets the
    file descriptor of grpc.health.v1.Health."""
    resp = _ask(app.addr, V1_METHOD, list_services="")
    names = {s.name for s in resp.list_services_response.service}  # type: ignore[attr-defined]
    assert {
        "grpc.health.v1.Health",
        "trt_health.diagnostics.v1.Diagnostics",
        "grpc.reflection.v1alpha.ServerReflection",
        REFLECTION_V1,
    } <= names
    desc = _ask(app.addr, V1_METHOD, file_containing_symbol="grpc.health.v1.Health")
    assert desc.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]


def test_v1alpha_reflection_still_answers(app: AppThread) -> None:
    """Older clients on v1alpha are answered too."""
    resp = _ask(app.addr, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", list_services="")
    names = {s.name for s in resp.list_services_response.service}  # type: ignore[attr-defined]
    assert "grpc.health.v1.Health" in names
