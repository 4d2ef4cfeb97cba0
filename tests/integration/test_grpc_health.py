"""grpc.health.v1 behaviour of the real server on an ephemeral port, rule by rule."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.core.values import CheckResult, Severity
from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc

from .conftest import NOT_SERVING, SERVICE_UNKNOWN, SERVING, AppThread, check, health_stub, wait_until

GPU_GATES = frozenset({"readiness", "gpu", "gpu/GPU-1"})


def ok(name: str = "gpu/GPU-1/ecc", gates: frozenset[str] = GPU_GATES) -> CheckResult:
    return CheckResult.passed(name, gates=gates)


def fatal(name: str = "gpu/GPU-1/ecc", gates: frozenset[str] = GPU_GATES) -> CheckResult:
    return CheckResult.failed(
        name, "EccUncorrectable", "uncontained ECC error", severity=Severity.FATAL, gates=gates
    )


class WatchReader:
    """Reads a Watch stream on a thread into a queue."""

    def __init__(self, addr: str, service: str) -> None:
        self.channel = grpc.insecure_channel(addr)
        self.stub = health_pb2_grpc.HealthStub(self.channel)
        self.call = self.stub.Watch(health_pb2.HealthCheckRequest(service=service))
        self.q: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        try:
            for msg in self.call:
                self.q.put(int(msg.status))
        except grpc.RpcError as exc:
            self.error = exc
        self.ended.set()

    def next(self, timeout: float = 5.0) -> int:
        return int(self.q.get(timeout=timeout))

    def cancel(self) -> None:
        self.call.cancel()
        self.channel.close()


def test_services_start_not_serving(make_app: Any) -> None:
    """Every service is NOT_SERVING until the checks say otherwise (no stock "" SERVING)."""
    app: AppThread = make_app()
    app.call(_expect(app, ["gpu"]))
    for service in ("", "readiness"):
        assert check(app.addr, service) == NOT_SERVING
    assert check(app.addr, "startup") == SERVING
    assert check(app.addr, "liveness") == SERVING
    app.submit(ok())
    app.app.policy.settle("gpu")
    app.submit(ok())
    assert check(app.addr, "") == SERVING


async def _expect(app: AppThread, names: list[str]) -> None:
    app.app.policy.expect(names)
    app.app.publish()


def test_check_unknown_service_is_not_found(app: AppThread) -> None:
    """Check of an unregistered service fails with NOT_FOUND (never SERVICE_UNKNOWN)."""
    ch, stub = health_stub(app.addr)
    with ch, pytest.raises(grpc.RpcError) as info:
        stub.Check(health_pb2.HealthCheckRequest(service="no-such-service"), timeout=2)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_watch_unknown_then_appears(app: AppThread) -> None:
    """Watch of an unknown service sends SERVICE_UNKNOWN, stays open, then the real status."""
    w = WatchReader(app.addr, "engine/llama")
    assert w.next() == SERVICE_UNKNOWN
    assert w.q.empty() and not w.ended.is_set()
    app.submit(ok("engine/llama/checksum", frozenset({"engine/llama"})))
    assert w.next() == SERVING
    w.cancel()


def test_watch_current_then_changes_without_duplicates(app: AppThread) -> None:
    """Watch sends the current status, one message per change, and no duplicates."""
    app.submit(ok())
    w = WatchReader(app.addr, "gpu/GPU-1")
    assert w.next() == SERVING
    app.submit(ok())
    app.submit(ok())
    app.submit(fatal())
    assert w.next() == NOT_SERVING
    app.submit(fatal())
    for _ in range(3):
        app.submit(ok())  # fatal recovery needs 3 passes
    assert w.next() == SERVING
    app.submit(ok())
    app.submit(ok())
    # witness: the stream is ordered, so a duplicate SERVING would arrive before this change
    app.submit(fatal())
    assert w.next() == NOT_SERVING, "duplicate statuses were sent"
    w.cancel()


def test_watch_latest_wins_for_slow_reader(app: AppThread) -> None:
    """A reader that falls behind ends on the newest status, and never blocks others."""
    app.submit(ok())
    ch, stub = health_stub(app.addr)
    call = stub.Watch(health_pb2.HealthCheckRequest(service="gpu/GPU-1"))
    first = next(call)
    assert first.status == SERVING
    # flip many times while the reader is not reading
    for _ in range(200):
        app.submit(fatal())
        app.submit(ok(), ok(), ok())
    app.submit(fatal())
    # other clients are not blocked meanwhile
    assert check(app.addr, "gpu/GPU-1") == NOT_SERVING
    statuses = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        msg = next(call)
        statuses.append(int(msg.status))
        if check(app.addr, "gpu/GPU-1") == statuses[-1] and statuses[-1] == NOT_SERVING:
            break
    assert statuses[-1] == NOT_SERVING
    assert all(a != b for a, b in itertools.pairwise(statuses)), "duplicates sent"
    call.cancel()
    ch.close()


def test_watch_cap_and_check_still_fast(make_app: Any) -> None:
    """Beyond the cap Watch gets RESOURCE_EXHAUSTED, and Check on a fresh connection stays fast:
    with only 2 RPC threads and 20 open streams, no Watch holds an RPC thread."""
    app: AppThread = make_app(grpc_max_watchers=20, grpc_threads=2)
    readers = [WatchReader(app.addr, "liveness") for _ in range(20)]
    for r in readers:
        assert r.next() == SERVING
    extra = WatchReader(app.addr, "liveness")
    assert extra.ended.wait(5)
    assert extra.error is not None and extra.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    latencies = []
    for _ in range(20):
        t0 = time.perf_counter()
        assert check(app.addr, "liveness", timeout=1.0) == SERVING  # fresh channel each time
        latencies.append(time.perf_counter() - t0)
    assert max(latencies) < 1.0, latencies  # the kubelet's whole budget, dial included
    # a slot frees when a watcher leaves
    readers[0].cancel()
    wait_until(lambda: app.app.health_service.stats.watchers_open == 19)
    again = WatchReader(app.addr, "liveness")
    assert again.next() == SERVING
    for r in [*readers[1:], again]:
        r.cancel()


def test_watch_fanout_after_half_cancel(app: AppThread) -> None:
    """With 200 watchers, half cancel, then a change reaches every survivor."""
    app.submit(ok())
    readers = [WatchReader(app.addr, "gpu") for _ in range(200)]
    for r in readers:
        assert r.next() == SERVING
    for r in readers[:100]:
        r.cancel()
    app.submit(fatal())
    for r in readers[100:]:
        assert r.next(timeout=10) == NOT_SERVING
    for r in readers[100:]:
        r.cancel()


def test_list_and_cap(make_app: Any) -> None:
    """List returns every service with its status; beyond the cap RESOURCE_EXHAUSTED."""
    app: AppThread = make_app(grpc_list_max_services=7)
    app.submit(ok())
    ch, stub = health_stub(app.addr)
    with ch:
        resp = stub.List(health_pb2.HealthListRequest(), timeout=2)
        statuses = {k: v.status for k, v in resp.statuses.items()}
        assert statuses["gpu/GPU-1"] == SERVING
        assert set(statuses) >= {"", "readiness", "liveness", "startup", "workload-liveness", "gpu"}
        app.submit(ok("engine/a/file", frozenset({"engine/a"})))
        with pytest.raises(grpc.RpcError) as info:
            stub.List(health_pb2.HealthListRequest(), timeout=2)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_gzip_requests_accepted(app: AppThread) -> None:
    """A gzip-compressed Check (grpc_health_probe -gzip) is answered."""
    ch, stub = health_stub(app.addr)
    with ch:
        resp = stub.Check(
            health_pb2.HealthCheckRequest(service="liveness"),
            timeout=2,
            compression=grpc.Compression.Gzip,
        )
    assert resp.status == SERVING


def test_huge_and_malformed_requests_get_clean_errors(app: AppThread) -> None:
    """Oversized names and garbage bytes get gRPC errors; the server keeps serving."""
    ch, stub = health_stub(app.addr)
    with ch:
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="x" * 5000), timeout=2)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="x" * 200_000), timeout=2)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        raw = ch.unary_unary("/grpc.health.v1.Health/Check")
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\x0a\x05\xff\xfe\xfd\xfc\xfb", timeout=2)  # invalid UTF-8 in a proto3 string
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as info:
            raw(b"\xff\xff\xff", timeout=2)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch")
        with pytest.raises(grpc.RpcError) as info:
            list(watch(b"\xff\xff\xff", timeout=2))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert check(app.addr, "liveness") == SERVING


def test_reflection_lists_services(app: AppThread) -> None:
    """Server reflection is on and names the health and diagnostics services."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    ch = grpc.insecure_channel(app.addr)
    with ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=2
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"grpc.health.v1.Health", "trt_health.diagnostics.v1.Diagnostics"} <= names


def test_diagnostics_reports_reason_and_since(app: AppThread) -> None:
    """The diagnostics RPC says why: status, reason, message, labels, since, gating."""
    r = CheckResult.failed(
        "gpu/GPU-1/ecc",
        "EccUncorrectable",
        "2 uncorrectable errors",
        severity=Severity.FATAL,
        gates=GPU_GATES,
        labels={"uuid": "GPU-1"},
        value=2,
    )
    before = time.time()
    app.submit(r)
    ch = grpc.insecure_channel(app.addr)
    with ch:
        resp = diagnostics_pb2_grpc.DiagnosticsStub(ch).GetConditions(
            diagnostics_pb2.ConditionsRequest(), timeout=2
        )
    (c,) = [c for c in resp.conditions if c.name == "gpu/GPU-1/ecc"]
    assert c.reason == "EccUncorrectable" and c.message == "2 uncorrectable errors"
    assert c.status == diagnostics_pb2.Condition.FAIL
    assert c.established == diagnostics_pb2.Condition.UNHEALTHY and c.gating
    assert c.severity == "fatal" and c.labels["uuid"] == "GPU-1" and c.number == 2
    assert before - 1 <= c.since_unix <= time.time() + 1
    readiness = {s.name: s for s in resp.services}["readiness"]
    assert not readiness.serving and readiness.reasons == ["gpu/GPU-1/ecc: EccUncorrectable"]


def test_shutdown_sends_not_serving_and_ends_streams(make_app: Any) -> None:
    """On stop every watcher gets NOT_SERVING, then its stream ends with OK."""
    app: AppThread = make_app()
    readers = [WatchReader(app.addr, s) for s in ("liveness", "startup", "")]
    firsts = [r.next() for r in readers]
    assert firsts[:2] == [SERVING, SERVING]
    app.call(app.app.stop())
    for r in readers:
        statuses = []
        assert r.ended.wait(10)
        while not r.q.empty():
            statuses.append(r.q.get())
        assert (statuses[-1] if statuses else None) in (NOT_SERVING, None)
        assert r.error is None, r.error  # ended cleanly with OK
    assert readers[0].q.empty()


def test_unix_socket(make_app: Any, tmp_path: Any) -> None:
    """The optional Unix socket serves the same health service."""
    sock = tmp_path / "health.sock"
    app: AppThread = make_app(grpc_unix_socket=str(sock))
    assert check(f"unix:{sock}", "liveness") == SERVING
    assert app.app.grpc_port > 0
