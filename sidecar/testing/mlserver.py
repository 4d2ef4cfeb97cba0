"""A real MLServer (Seldon's KServe v2 server) for tests and bench: versioned ONNX models.

MLServer pins protobuf < 7, which conflicts with this project's generated code, so it runs from
its own environment: ``TRT_HEALTH_TEST_MLSERVER`` names its ``mlserver`` executable (``make
test`` sets it). :func:`mlserver_exe` is None without it (callers skip and say why).

Each model version is one folder with a ``model-settings.json`` (``parameters.version``) and a
small MLModel that runs the canary ONNX model with ONNX Runtime and answers with its version
(``model_version`` in the response), so a test can see *which* version answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from sidecar.testing import pick_port, wait_until

CANARY_DIR = Path(__file__).resolve().parents[2] / "engines" / "canary"

RUNTIME = """
import asyncio

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class VersionedOnnx(MLModel):
    async def load(self) -> bool:
        self.sess = ort.InferenceSession(
            self.settings.parameters.uri, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        delay = float(getattr(self.settings.parameters, "delay_s", 0) or 0)
        if delay:
            await asyncio.sleep(delay)  # a slower version (latency-regression tests)
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        names = [o.name for o in self.sess.get_outputs()]
        outs = self.sess.run(names, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(n, o) for n, o in zip(names, outs)],
        )
"""


def mlserver_exe() -> str | None:
    return os.environ.get("TRT_HEALTH_TEST_MLSERVER") or shutil.which("mlserver")


def write_version(root: Path, model: str, version: str, delay_s: float = 0.0) -> Path:
    """``root/<model>/v<version>/`` with the runtime, the canary ONNX file and the settings;
    ``delay_s``: every inference of this version waits that long first."""
    d = root / model / f"v{version}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "versioned_runtime.py").write_text(RUNTIME, encoding="utf-8")
    shutil.copyfile(CANARY_DIR / "canary.onnx", d / "model.onnx")
    settings = {
        "name": model,
        "implementation": "versioned_runtime.VersionedOnnx",
        "parameters": {"uri": str(d / "model.onnx"), "version": version, "delay_s": delay_s},
    }
    (d / "model-settings.json").write_text(json.dumps(settings), encoding="utf-8")
    return d


@dataclass
class MLServer:
    url: str
    root: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    grpc_target: str  # host:port of its KServe v2 gRPC endpoint

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def _ready(proc: subprocess.Popen[bytes], url: str, models: Sequence[str]) -> str | None:
    if proc.poll() is not None:
        return "exited"
    try:
        for m in models:
            if httpx.get(f"{url}/v2/models/{m}/ready", timeout=1).status_code != 200:
                return None
    except httpx.HTTPError:
        return None
    return "ready"


@contextlib.contextmanager
def running_mlserver(
    root: Path,
    models: Mapping[str, Sequence[str]],
    timeout: float = 120.0,
    delays: Mapping[tuple[str, str], float] | None = None,
) -> Iterator[MLServer]:
    """Start MLServer on ``root`` serving ``models`` (name -> versions); stop it afterwards.
    MLServer cannot bind port 0 and say which port it got: ports are picked, and it starts
    again on new ones when a parallel run took one first (a bounded number of times)."""
    exe = mlserver_exe()
    if exe is None:
        raise RuntimeError("MLServer not available: set TRT_HEALTH_TEST_MLSERVER")
    for model, versions in models.items():
        for v in versions:
            write_version(root, model, v, (delays or {}).get((model, v), 0.0))
    for attempt in range(5):
        ports = {"http_port": pick_port(), "grpc_port": pick_port(), "metrics_port": pick_port()}
        settings: dict[str, Any] = {**ports, "parallel_workers": 0, "host": "127.0.0.1"}
        (root / "settings.json").write_text(json.dumps(settings), encoding="utf-8")
        log_path = root / f"mlserver-{attempt}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([exe, "start", str(root)], cwd=root, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{ports['http_port']}"
        try:
            state = wait_until(partial(_ready, proc, url, list(models)), timeout, 0.1, "MLServer ready")
        except AssertionError:
            proc.kill()
            proc.wait(10)
            raise RuntimeError("MLServer not ready: " + log_path.read_text()[-3000:]) from None
        if state == "ready":
            break
        if "address already in use" not in log_path.read_text().lower():
            raise RuntimeError("MLServer exited: " + log_path.read_text()[-3000:])
    else:
        raise RuntimeError("MLServer: every port chosen was taken")
    try:
        yield MLServer(url, root, proc, log_path, f"127.0.0.1:{ports['grpc_port']}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def infer_version(url: str, model: str, version: str | None = None) -> tuple[str, list[float]]:
    """A real inference with the canary's golden input: (the version that answered, outputs)."""
    import numpy as np

    x = np.load(CANARY_DIR / "golden_input.npy")
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {
        "inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]
    }
    r = httpx.post(url + path, json=body, timeout=5)
    r.raise_for_status()
    doc = r.json()
    return str(doc.get("model_version") or ""), [float(v) for v in doc["outputs"][0]["data"]]


def index(url: str, model: str) -> list[str]:
    """The versions of ``model`` the server's repository index lists."""
    r = httpx.post(f"{url}/v2/repository/index", json={}, timeout=5)
    r.raise_for_status()
    return sorted(str(d.get("version") or "") for d in r.json() if d.get("name") == model)
