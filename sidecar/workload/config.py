"""The ``workload:`` config section: how to ask the main inference server a known question."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.config import ConfigError, Section

KINDS = ("kserve-http", "kserve-grpc", "openai", "http-ready")

# KServe v2 datatypes <-> numpy dtypes.
V2_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
NUMPY_TO_V2 = {v: k for k, v in V2_TO_NUMPY.items()}


@dataclass(frozen=True)
class Tensor:
    """A named tensor of the probe request or of the expected answer."""

    name: str
    array: np.ndarray[Any, Any]

    @property
    def datatype(self) -> str:
        return NUMPY_TO_V2.get(str(self.array.dtype), "FP32")


@dataclass(frozen=True)
class WorkloadConfig:
    """Defaults are documented in the README's configuration table and ``engines/README.md``."""

    enabled: bool = False
    kind: str = "http-ready"
    url: str = ""
    target: str = ""
    model: str = ""
    model_version: str = ""
    interval_s: float = 5.0
    timeout_s: float = 2.0
    failure_threshold: int = 3
    gate_readiness: bool = True
    check_ready: bool = True
    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    atol: float = 1e-4
    rtol: float = 1e-3
    prompt: str = "ping"
    max_tokens: int = 1
    expect_text: str | None = None
    ready_path: str = ""
    expected_status: tuple[int, ...] = (200,)
    headers: dict[str, str] = field(default_factory=dict)


def _array(sec: Section, key_prefix: str, dtype: str, base: Path | None) -> np.ndarray[Any, Any]:
    """``data:`` (nested list) or ``file:`` (.npy) of one tensor entry."""
    has_data, has_file = sec.has("data"), sec.has("file")
    shape = sec.int_list("shape")
    if has_data == has_file:
        sec.error("data", "give exactly one of 'data' or 'file'")
        return np.zeros(0, dtype="float32")
    if has_file:
        p = Path(sec.text("file", ""))
        if base is not None and not p.is_absolute():
            p = base / p
        try:
            arr: np.ndarray[Any, Any] = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            sec.error("file", f"cannot load {p}: {exc}")
            return np.zeros(0, dtype="float32")
    else:
        try:
            arr = np.asarray(sec.raw["data"], dtype=dtype)
        except (TypeError, ValueError) as exc:
            sec.error("data", f"not a {dtype} array: {exc}")
            return np.zeros(0, dtype="float32")
    if dtype and str(arr.dtype) != dtype:
        arr = arr.astype(dtype)
    if shape:
        try:
            arr = arr.reshape(shape)
        except ValueError:
            sec.error("shape", f"{shape} does not fit {arr.size} values")
    return arr


def _tensors(sec: Section, key: str, base: Path | None) -> tuple[Tensor, ...]:
    out = []
    for item in sec.sub_list(key):
        name = item.text("name", "")
        if not name:
            item.error("name", "required")
        dt = item.text("datatype", "FP32", choices=V2_TO_NUMPY)
        arr = _array(item, key, V2_TO_NUMPY[dt], base)
        item.reject_unknown()
        out.append(Tensor(name, arr))
    return tuple(out)


def _from_manifest(sec: Section, path: str) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...], float, float]:
    from sidecar.engine.manifest import load_manifest

    try:
        m = load_manifest(Path(path))
    except (ConfigError, OSError) as exc:
        sec.error("manifest", f"cannot use {path}: {exc}")
        return (), (), 1e-4, 1e-3
    ins, outs = [], []
    for name, p in m.golden_input_paths().items():
        try:
            ins.append(Tensor(name, np.load(p, allow_pickle=False)))
        except (OSError, ValueError) as exc:
            sec.error("manifest", f"golden input {p}: {exc}")
    for name, p in m.golden_output_paths().items():
        try:
            outs.append(Tensor(name, np.load(p, allow_pickle=False)))
        except (OSError, ValueError) as exc:
            sec.error("manifest", f"golden output {p}: {exc}")
    return tuple(ins), tuple(outs), m.tolerance.atol, m.tolerance.rtol


def parse_workload_config(sec: Section) -> WorkloadConfig:
    """Read ``workload:``; every problem is recorded on ``sec`` naming its field."""
    enabled = sec.flag("enabled", False)
    kind = sec.text("kind", "http-ready", choices=KINDS)
    url = sec.text("url", "")
    target = sec.text("target", "")
    model = sec.text("model", "")
    interval = sec.duration("interval", 5.0)
    timeout = sec.duration("timeout", 2.0)
    if interval <= 0:
        sec.error("interval", "must be > 0")
        interval = 5.0
    if timeout <= 0:
        sec.error("timeout", "must be > 0")
        timeout = 2.0
    base = None
    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    atol, rtol = 1e-4, 1e-3
    manifest = sec.opt_text("manifest")
    if manifest is not None:
        inputs, outputs, atol, rtol = _from_manifest(sec, manifest)
        base = Path(manifest).parent
    req = sec.sub("request")
    expect = sec.sub("expect")
    if req.raw:
        inputs = _tensors(req, "inputs", base)
    req.reject_unknown()
    if expect.raw:
        outputs = _tensors(expect, "outputs", base) or outputs
        atol = expect.number("atol", atol, minimum=0.0)
        rtol = expect.number("rtol", rtol, minimum=0.0)
    expect_text = expect.opt_text("text")
    expect.reject_unknown()
    headers_sec = sec.sub("headers")
    headers = {str(k): headers_sec.text(str(k), "") for k in headers_sec.raw}
    cfg = WorkloadConfig(
        enabled=enabled,
        kind=kind,
        url=url.rstrip("/"),
        target=target,
        model=model,
        model_version=sec.text("model_version", ""),
        interval_s=interval,
        timeout_s=timeout,
        failure_threshold=sec.integer("failure_threshold", 3, minimum=1),
        gate_readiness=sec.flag("gate_readiness", True),
        check_ready=sec.flag("check_ready", True),
        inputs=inputs,
        outputs=outputs,
        atol=atol,
        rtol=rtol,
        prompt=sec.text("prompt", "ping"),
        max_tokens=sec.integer("max_tokens", 1, minimum=1),
        expect_text=expect_text,
        ready_path=sec.text("ready_path", ""),
        expected_status=tuple(sec.int_list("expected_status", [200])),
        headers=headers,
    )
    sec.reject_unknown()
    if enabled:
        if kind in ("kserve-http", "openai", "http-ready") and not cfg.url:
            sec.error("url", f"required for kind {kind}")
        if kind == "kserve-grpc" and not cfg.target:
            sec.error("target", "required for kind kserve-grpc (host:port)")
        if kind in ("kserve-http", "kserve-grpc", "openai") and not cfg.model:
            sec.error("model", f"required for kind {kind}")
        if kind in ("kserve-http", "kserve-grpc") and not cfg.inputs and not cfg.check_ready:
            sec.error("request", "give request.inputs (or manifest) or keep check_ready on")
    return cfg
