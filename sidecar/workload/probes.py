"""One tiny request with a known answer to the main server's own API.

KServe v2 / Open Inference Protocol over HTTP (``httpx``) and gRPC (stubs generated here from
``kserve_v2.proto``: no ``tritonclient`` needed), OpenAI-compatible completions (vLLM,
TensorRT-LLM servers), and a plain readiness URL. Every outcome is a :class:`ProbeOutcome`
with one of the documented reasons; library exceptions never escape.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy as np

from sidecar.workload.config import V2_TO_NUMPY, Tensor, WorkloadConfig

OK = ""
UNREACHABLE = "WorkloadUnreachable"
TIMEOUT = "ProbeTimeout"
WRONG = "WorkloadWrongAnswer"
NOT_READY = "WorkloadNotReady"
HTTP_ERROR = "WorkloadHttpError"


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """``reason`` is empty on success; ``latency_s`` covers the whole probe."""

    reason: str
    message: str
    latency_s: float

    @property
    def ok(self) -> bool:
        return not self.reason


class WorkloadProbe(Protocol):
    async def probe(self) -> ProbeOutcome: ...

    async def close(self) -> None: ...


class _Fail(Exception):
    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message
        super().__init__(message)


def compare_outputs(
    expected: tuple[Tensor, ...], got: dict[str, np.ndarray[Any, Any]], atol: float, rtol: float
) -> str | None:
    """None when every expected tensor matches (NaN/Inf never match); else what differs."""
    for t in expected:
        if t.name not in got:
            return f"output {t.name!r} missing (got {sorted(got)})"
        arr = got[t.name]
        if arr.size != t.array.size:
            return f"output {t.name!r} has {arr.size} values, expected {t.array.size}"
        a = arr.reshape(t.array.shape).astype("float64")
        b = t.array.astype("float64")
        if not np.all(np.isfinite(a)):
            return f"output {t.name!r} contains NaN or Inf"
        bad = np.abs(a - b) > atol + rtol * np.abs(b)
        if bad.any():
            i = int(np.argmax(np.abs(a - b)))
            return (
                f"output {t.name!r}: {int(bad.sum())} of {a.size} values off "
                f"(max |diff| {float(np.abs(a - b).flat[i]):.3g} at {i}, atol {atol}, rtol {rtol})"
            )
    return None


class HttpProbeBase:
    def __init__(self, cfg: WorkloadConfig, transport: httpx.AsyncBaseTransport | None = None):
        self.cfg = cfg
        self.client = httpx.AsyncClient(
            base_url=cfg.url,
            timeout=httpx.Timeout(cfg.timeout_s),
            headers=cfg.headers,
            transport=transport,
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def probe(self) -> ProbeOutcome:
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                msg = await self._probe()
        except _Fail as f:
            return ProbeOutcome(f.reason, f.message, time.monotonic() - start)
        except (TimeoutError, httpx.TimeoutException):
            return ProbeOutcome(
                TIMEOUT, f"no answer within {self.cfg.timeout_s:g}s", time.monotonic() - start
            )
        except httpx.TransportError as exc:
            return ProbeOutcome(
                UNREACHABLE,
                f"{type(exc).__name__}: {exc}" or "unreachable",
                time.monotonic() - start,
            )
        return ProbeOutcome(OK, msg, time.monotonic() - start)

    async def _probe(self) -> str:
        raise NotImplementedError

    async def _get_ok(self, path: str, what: str) -> None:
        r = await self.client.get(path)
        if r.status_code in (400, 503, 404) and what != "url":
            raise _Fail(NOT_READY, f"{what} not ready: GET {path} -> {r.status_code}")
        if r.status_code not in self.cfg.expected_status:
            reason = NOT_READY if r.status_code == 503 else HTTP_ERROR
            raise _Fail(reason, f"GET {path} -> {r.status_code}")

    @staticmethod
    def _json(r: httpx.Response, what: str) -> Any:
        if r.status_code == 503:
            raise _Fail(NOT_READY, f"{what} -> 503")
        if r.status_code >= 400:
            raise _Fail(HTTP_ERROR, f"{what} -> {r.status_code}: {r.text[:200]}")
        try:
            return r.json()
        except ValueError:
            raise _Fail(WRONG, f"{what} answered no JSON: {r.text[:200]!r}") from None


class HttpReadyProbe(HttpProbeBase):
    """GET ``url`` (+ ``ready_path``); success is a status in ``expected_status``."""

    async def _probe(self) -> str:
        path = self.cfg.ready_path or ""
        # the absolute URL: httpx joins a relative one onto base_url + "/", which would GET
        # ".../ready/" for an empty ready_path (a route Triton and others do not answer)
        r = await self.client.get(f"{self.cfg.url}{path}")
        if r.status_code not in self.cfg.expected_status:
            reason = NOT_READY if r.status_code in (503, 425) else HTTP_ERROR
            raise _Fail(reason, f"GET {self.cfg.url}{path} -> {r.status_code}")
        return f"GET {path or '/'} -> {r.status_code}"


class KServeHttpProbe(HttpProbeBase):
    """``GET /v2/models/<m>/ready`` then ``POST /v2/models/<m>/infer`` and compare outputs."""

    def _model_path(self) -> str:
        v = f"/versions/{self.cfg.model_version}" if self.cfg.model_version else ""
        return f"/v2/models/{self.cfg.model}{v}"

    async def _probe(self) -> str:
        cfg = self.cfg
        base = self._model_path()
        if cfg.check_ready:
            r = await self.client.get(f"{base}/ready")
            if r.status_code != 200:
                raise _Fail(NOT_READY, f"model {cfg.model} not ready: {r.status_code}")
        if not cfg.inputs:
            return f"model {cfg.model} ready"
        body = {
            "inputs": [
                {
                    "name": t.name,
                    "shape": list(t.array.shape),
                    "datatype": t.datatype,
                    "data": t.array.flatten().tolist(),
                }
                for t in cfg.inputs
            ]
        }
        if cfg.outputs:
            body["outputs"] = [{"name": t.name} for t in cfg.outputs]
        r = await self.client.post(f"{base}/infer", json=body)
        doc = self._json(r, f"POST {base}/infer")
        got: dict[str, np.ndarray[Any, Any]] = {}
        try:
            for o in doc.get("outputs", []):
                dt = V2_TO_NUMPY.get(str(o.get("datatype", "FP32")), "float64")
                got[str(o["name"])] = np.asarray(o["data"], dtype=dt).reshape(o["shape"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _Fail(WRONG, f"malformed infer response: {exc}") from None
        diff = compare_outputs(cfg.outputs, got, cfg.atol, cfg.rtol)
        if diff:
            raise _Fail(WRONG, diff)
        return f"inference on {cfg.model} answered correctly"


class OpenAIProbe(HttpProbeBase):
    """``POST /v1/completions`` with a fixed prompt and ``max_tokens`` (1): the answer must
    be a non-empty choice, or exactly ``expect.text`` when configured (use temperature 0)."""

    async def _probe(self) -> str:
        cfg = self.cfg
        if cfg.ready_path:
            await self._get_ok(cfg.ready_path, "server")
        body = {
            "model": cfg.model,
            "prompt": cfg.prompt,
            "max_tokens": cfg.max_tokens,
            "temperature": 0,
            "stream": False,
        }
        r = await self.client.post("/v1/completions", json=body)
        doc = self._json(r, "POST /v1/completions")
        try:
            text = doc["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise _Fail(WRONG, f"no choices in the answer: {str(doc)[:200]}") from None
        if not isinstance(text, str) or (cfg.expect_text is None and not text):
            raise _Fail(WRONG, "empty completion")
        if cfg.expect_text is not None and text != cfg.expect_text:
            raise _Fail(WRONG, f"completion {text!r}, expected {cfg.expect_text!r}")
        return f"completion answered {text!r}"


class KServeGrpcProbe:
    """``ModelReady`` then ``ModelInfer`` over the KServe v2 gRPC API (raw tensor contents)."""

    _SERVICE = "/inference.GRPCInferenceService/"

    def __init__(self, cfg: WorkloadConfig) -> None:
        import grpc

        from sidecar.workload import kserve_v2_pb2 as pb

        self.cfg = cfg
        self._grpc = grpc
        self._pb = pb
        self.channel = grpc.aio.insecure_channel(cfg.target)
        self._ready = self.channel.unary_unary(
            self._SERVICE + "ModelReady",
            request_serializer=pb.ModelReadyRequest.SerializeToString,
            response_deserializer=pb.ModelReadyResponse.FromString,
        )
        self._infer = self.channel.unary_unary(
            self._SERVICE + "ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        self._metadata = tuple((k.lower(), v) for k, v in cfg.headers.items())

    async def close(self) -> None:
        await self.channel.close()

    async def probe(self) -> ProbeOutcome:
        start = time.monotonic()
        grpc = self._grpc
        try:
            msg = await self._probe()
        except _Fail as f:
            return ProbeOutcome(f.reason, f.message, time.monotonic() - start)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                reason = TIMEOUT
            elif code == grpc.StatusCode.UNAVAILABLE:
                reason = UNREACHABLE
            else:
                reason = HTTP_ERROR
            return ProbeOutcome(reason, f"{code.name}: {exc.details() or ''}"[:300], time.monotonic() - start)
        return ProbeOutcome(OK, msg, time.monotonic() - start)

    async def _probe(self) -> str:
        cfg, pb = self.cfg, self._pb
        deadline = time.monotonic() + cfg.timeout_s

        def left() -> float:
            return max(0.001, deadline - time.monotonic())

        if cfg.check_ready:
            rr = await self._ready(
                pb.ModelReadyRequest(name=cfg.model, version=cfg.model_version),
                timeout=left(),
                metadata=self._metadata,
            )
            if not rr.ready:
                raise _Fail(NOT_READY, f"model {cfg.model} not ready")
        if not cfg.inputs:
            return f"model {cfg.model} ready"
        req = pb.ModelInferRequest(model_name=cfg.model, model_version=cfg.model_version)
        for t in cfg.inputs:
            tensor = req.inputs.add()
            tensor.name = t.name
            tensor.datatype = t.datatype
            tensor.shape.extend(int(d) for d in t.array.shape)
            req.raw_input_contents.append(np.ascontiguousarray(t.array).tobytes())
        for t in cfg.outputs:
            req.outputs.add().name = t.name
        resp = await self._infer(req, timeout=left(), metadata=self._metadata)
        got: dict[str, np.ndarray[Any, Any]] = {}
        try:
            for i, o in enumerate(resp.outputs):
                dt = np.dtype(V2_TO_NUMPY.get(o.datatype, "float32"))
                if i < len(resp.raw_output_contents):
                    arr = np.frombuffer(resp.raw_output_contents[i], dtype=dt)
                else:
                    arr = _from_contents(o.contents, dt)
                got[o.name] = arr.reshape(tuple(o.shape))
        except ValueError as exc:
            raise _Fail(WRONG, f"malformed infer response: {exc}") from None
        diff = compare_outputs(cfg.outputs, got, cfg.atol, cfg.rtol)
        if diff:
            raise _Fail(WRONG, diff)
        return f"inference on {cfg.model} answered correctly (gRPC)"


def _from_contents(contents: Any, dt: np.dtype[Any]) -> np.ndarray[Any, Any]:
    kind = dt.kind
    if kind == "f":
        vals = contents.fp64_contents if dt.itemsize == 8 else contents.fp32_contents
    elif kind == "b":
        vals = contents.bool_contents
    elif kind == "u":
        vals = contents.uint64_contents if dt.itemsize == 8 else contents.uint_contents
    else:
        vals = contents.int64_contents if dt.itemsize == 8 else contents.int_contents
    return np.asarray(list(vals), dtype=dt)


def make_probe(cfg: WorkloadConfig, *, transport: httpx.AsyncBaseTransport | None = None) -> WorkloadProbe:
    """The probe for ``cfg.kind``."""
    if cfg.kind == "kserve-http":
        return KServeHttpProbe(cfg, transport)
    if cfg.kind == "openai":
        return OpenAIProbe(cfg, transport)
    if cfg.kind == "kserve-grpc":
        return KServeGrpcProbe(cfg)
    return HttpReadyProbe(cfg, transport)
