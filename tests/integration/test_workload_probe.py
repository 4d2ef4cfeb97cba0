"""The workload probe against real servers on real sockets.

- KServe v2 over HTTP and gRPC: a real MLServer (Seldon's, nobody here wrote it) serving the
  canary ONNX model through a small custom MLModel that runs ONNX Runtime
  (:mod:`sidecar.testing.mlserver`). MLServer pins protobuf < 7, which conflicts with this
  project's generated code, so it runs from its own environment: set
  ``TRT_HEALTH_TEST_MLSERVER`` to its ``mlserver`` executable (or have ``mlserver`` on PATH).
  Without it those tests skip and say why.
- OpenAI-compatible completions and error paths (503, slow, wrong answer): a small
  ``http.server`` fake in this file (an honest HTTP server, but written here).
- Connection refused: a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sidecar.config import Section
from sidecar.testing import closed_port
from sidecar.testing.mlserver import mlserver_exe, running_mlserver
from sidecar.workload.component import WorkloadComponent
from sidecar.workload.config import Tensor, WorkloadConfig, parse_workload_config
from sidecar.workload.probes import make_probe

CANARY = Path(__file__).resolve().parents[2] / "engines" / "canary"


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real MLServer serving the canary model; yields (http url, grpc target)."""
    if mlserver_exe() is None:
        pytest.skip("MLServer not available: set TRT_HEALTH_TEST_MLSERVER (see module docstring)")
    with running_mlserver(tmp_path_factory.mktemp("mlserver"), {"canary": ["1"]}) as server:
        yield server.url, server.grpc_target


def canary_cfg(kind: str, url: str = "", target: str = "", **kw: Any) -> WorkloadConfig:
    errors: list[str] = []
    raw: dict[str, Any] = {
        "enabled": True,
        "kind": kind,
        "url": url,
        "target": target,
        "model": "canary",
        "manifest": str(CANARY / "manifest.yaml"),
        "timeout": "2s",
    }
    raw.update(kw)
    cfg = parse_workload_config(Section(raw, "workload", errors))
    assert errors == []
    return cfg


@pytest.mark.parametrize("kind", ["kserve-http", "kserve-grpc"])
async def test_mlserver_canary_answers_correctly(mlserver: tuple[str, str], kind: str) -> None:
    """A real KServe v2 server answers the canary request with the golden output (HTTP, gRPC)."""
    url, target = mlserver
    probe = make_probe(canary_cfg(kind, url=url, target=target))
    try:
        out = await probe.probe()
        assert out.ok, out
        print(f"\n{kind} probe against MLServer: {out.latency_s * 1000:.1f} ms")
    finally:
        await probe.close()


@pytest.mark.parametrize("kind", ["kserve-http", "kserve-grpc"])
async def test_mlserver_wrong_answer(mlserver: tuple[str, str], kind: str) -> None:
    """When the real server's answer differs from the expected output: WorkloadWrongAnswer."""
    url, target = mlserver
    cfg = canary_cfg(kind, url=url, target=target)
    wrong = tuple(Tensor(t.name, t.array + 1.0) for t in cfg.outputs)
    probe = make_probe(WorkloadConfig(**{**cfg.__dict__, "outputs": wrong}))
    try:
        out = await probe.probe()
        assert out.reason == "WorkloadWrongAnswer" and "values off" in out.message
    finally:
        await probe.close()


@pytest.mark.parametrize("kind", ["kserve-http", "kserve-grpc"])
async def test_mlserver_unknown_model_not_ready(mlserver: tuple[str, str], kind: str) -> None:
    """Asking the real server about a model it does not serve is not ready / an error."""
    url, target = mlserver
    probe = make_probe(canary_cfg(kind, url=url, target=target, model="absent"))
    try:
        out = await probe.probe()
        assert out.reason in ("WorkloadNotReady", "WorkloadHttpError"), out
    finally:
        await probe.close()


@pytest.mark.parametrize("kind", ["kserve-http", "kserve-grpc", "openai", "http-ready"])
async def test_connection_refused(kind: str) -> None:
    """A port nobody listens on is WorkloadUnreachable, quickly."""
    with closed_port() as port:
        cfg = canary_cfg(kind, url=f"http://127.0.0.1:{port}", target=f"127.0.0.1:{port}")
        probe = make_probe(cfg)
        try:
            out = await probe.probe()
            assert out.reason == "WorkloadUnreachable", out
            assert out.latency_s < 2.0
        finally:
            await probe.close()


class FakeServer:
    """A small real HTTP server whose behaviour the test sets: OpenAI completions, KServe
    readiness, 503 not ready, slow answers."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.text = " pong"
        self.delay_s = 0.0
        self.requests: list[tuple[str, str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _common(self) -> bool:
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                if outer.mode == "not-ready":
                    self._send(503, {"error": "loading"})
                    return False
                return True

            def do_GET(self) -> None:
                outer.requests.append(("GET", self.path, None))
                if self._common():
                    self._send(200, {})

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n) or b"{}")
                outer.requests.append(("POST", self.path, body))
                if not self._common():
                    return
                if self.path == "/v1/completions":
                    if outer.mode == "error":
                        self._send(500, {"error": "CUDA error: an illegal memory access"})
                        return
                    self._send(200, {"choices": [{"index": 0, "text": outer.text}]})
                else:
                    self._send(404, {"error": "not found"})

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # the probe hung up on a slow answer: expected here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    srv = FakeServer()
    yield srv
    srv.close()


def openai_cfg(url: str, **kw: Any) -> WorkloadConfig:
    errors: list[str] = []
    raw = {"enabled": True, "kind": "openai", "url": url, "model": "llm", "timeout": "0.5s"}
    raw.update(kw)
    cfg = parse_workload_config(Section(raw, "workload", errors))
    assert errors == []
    return cfg


async def test_openai_completion_ok_and_request_shape(fake: FakeServer) -> None:
    """A non-empty completion passes; the request asks for max_tokens 1 at temperature 0."""
    probe = make_probe(openai_cfg(fake.url))
    try:
        out = await probe.probe()
        assert out.ok, out
        method, path, body = fake.requests[-1]
        assert (method, path) == ("POST", "/v1/completions")
        assert body["max_tokens"] == 1 and body["temperature"] == 0 and body["model"] == "llm"
    finally:
        await probe.close()


async def test_openai_wrong_and_empty_answers(fake: FakeServer) -> None:
    """An exact expected text that differs, or an empty completion, is WorkloadWrongAnswer."""
    probe = make_probe(openai_cfg(fake.url, expect={"text": " ping"}))
    try:
        assert (await probe.probe()).reason == "WorkloadWrongAnswer"
        fake.text = ""
        probe2 = make_probe(openai_cfg(fake.url))
        assert (await probe2.probe()).reason == "WorkloadWrongAnswer"
        await probe2.close()
    finally:
        await probe.close()


async def test_openai_server_error(fake: FakeServer) -> None:
    """A 500 from the server (poisoned CUDA context) is WorkloadHttpError with the text."""
    fake.mode = "error"
    probe = make_probe(openai_cfg(fake.url))
    try:
        out = await probe.probe()
        assert out.reason == "WorkloadHttpError" and "illegal memory access" in out.message
    finally:
        await probe.close()


@pytest.mark.parametrize("kind", ["openai", "http-ready", "kserve-http"])
async def test_503_is_not_ready(fake: FakeServer, kind: str) -> None:
    """A server answering 503 (loading) is WorkloadNotReady."""
    fake.mode = "not-ready"
    cfg = openai_cfg(fake.url) if kind == "openai" else canary_cfg(kind, url=fake.url)
    probe = make_probe(cfg)
    try:
        assert (await probe.probe()).reason == "WorkloadNotReady"
    finally:
        await probe.close()


@pytest.mark.parametrize("kind", ["openai", "http-ready", "kserve-http"])
async def test_slow_server_times_out(fake: FakeServer, kind: str) -> None:
    """A server slower than the probe timeout is ProbeTimeout, reported at the timeout."""
    fake.delay_s = 1.5
    cfg = openai_cfg(fake.url) if kind == "openai" else canary_cfg(kind, url=fake.url, timeout="0.3s")
    probe = make_probe(cfg)
    try:
        t = time.monotonic()
        out = await probe.probe()
        assert out.reason == "ProbeTimeout"
        assert time.monotonic() - t < 1.2
    finally:
        await probe.close()


async def test_grpc_slow_server_times_out() -> None:
    """A gRPC server that accepts but never answers in time is ProbeTimeout."""
    import grpc

    async def slow(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(2)
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelReady": grpc.unary_unary_rpc_method_handler(slow)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    probe = make_probe(canary_cfg("kserve-grpc", target=f"127.0.0.1:{port}", timeout="0.3s"))
    try:
        out = await probe.probe()
        assert out.reason == "ProbeTimeout", out
    finally:
        await probe.close()
        await server.stop(0)


class Gpu:
    def __init__(self, fault: bool) -> None:
        self.fault = fault

    def exclusive_process(self) -> bool:
        return False

    def busy(self) -> bool:
        return False

    def reset_generation(self) -> int:
        return 0

    def gpu_fault(self) -> bool:
        return self.fault


class Sink:
    def __init__(self) -> None:
        self.results: list[Any] = []
        self.triggered: list[str] = []

    def submit(self, results: Any) -> None:
        self.results.extend(results)

    def trigger(self, name: str) -> None:
        self.triggered.append(name)


@pytest.mark.parametrize("gpu_fault", [False, True])
async def test_component_liveness_with_real_failures(fake: FakeServer, gpu_fault: bool) -> None:
    """Through the component and a real failing server: workload-liveness fails at the 3rd
    failure when the GPU is fine, and never while the GPU is at fault."""
    fake.mode = "error"
    comp = WorkloadComponent(openai_cfg(fake.url), registry=CollectorRegistry(), gpu_state=Gpu(gpu_fault))
    sink = Sink()
    await comp.start(sink)
    try:
        assert sink.triggered == ["workload"] and sink.results[0].reason == "Starting"
        check = comp.checks()[0]
        lives = []
        for _ in range(3):
            ready, live = await check.run()
            assert ready.reason == "WorkloadHttpError"
            lives.append(live)
        if gpu_fault:
            assert all(x.ok and x.reason == "GpuFaultNotRestartable" for x in lives)
        else:
            assert [x.ok for x in lives] == [True, True, False]
        fake.mode = "ok"
        ready, live = await check.run()
        assert ready.ok and live.ok
    finally:
        await comp.stop()


def test_generated_stub_round_trip() -> None:
    """The generated KServe v2 messages keep raw tensor contents byte-exact."""
    from sidecar.workload import kserve_v2_pb2 as pb

    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add()
    t.name, t.datatype = "x", "FP32"
    t.shape.extend([1, 2])
    raw = np.array([1.5, -2.0], dtype=np.float32).tobytes()
    req.raw_input_contents.append(raw)
    back = pb.ModelInferRequest.FromString(req.SerializeToString())
    assert back.raw_input_contents[0] == raw and list(back.inputs[0].shape) == [1, 2]
