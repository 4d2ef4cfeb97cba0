"""The ``workload:`` config section: how to ask the main inference server a known question."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.config import ConfigError, Section
from sidecar.config.fields import custom, duration, flag, int_list, integer, read, text

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
GOLDEN_KEYS = ("manifest", "request", "expect")  # read by _golden, not declared: they fill several fields
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3


def _no_trailing_slash(url: str) -> str:
    return url.rstrip("/")


@dataclass(frozen=True)
class Tensor:
    """A named tensor of the probe request or of the expected answer."""

    name: str
    array: np.ndarray[Any, Any]

    @property
    def datatype(self) -> str:
        return NUMPY_TO_V2.get(str(self.array.dtype), "FP32")


def _headers(sec: Section, key: str, default: dict[str, str]) -> dict[str, str]:
    """``headers``: name -> value, sent with every probe request."""
    sub = sec.sub(key)
    return {str(k): sub.text(str(k), "") for k in sub.raw}


@dataclass(frozen=True)
class WorkloadConfig:
    """Durations in seconds; docs/config.md and ``engines/README.md`` say what each does.

    ``inputs``, ``outputs``, ``atol``, ``rtol`` and ``expect_text`` are the golden request and
    answer, read from ``manifest``, ``request`` and ``expect`` by :func:`_golden`."""

    enabled: bool = flag(False)
    kind: str = text("http-ready", choices=KINDS)
    url: str = text(convert=_no_trailing_slash)
    target: str = text()
    model: str = text()
    model_version: str = text()
    interval_s: float = duration(5.0, above=0)
    timeout_s: float = duration(2.0, above=0)
    failure_threshold: int = integer(3, min=1)
    gate_readiness: bool = flag(True)
    check_ready: bool = flag(True)
    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL
    prompt: str = text("ping")
    max_tokens: int = integer(1, min=1)
    expect_text: str | None = None
    ready_path: str = text()
    expected_status: tuple[int, ...] = int_list((200,))
    headers: dict[str, str] = custom(_headers, factory=dict)


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
        return (), (), DEFAULT_ATOL, DEFAULT_RTOL
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


def _golden(sec: Section) -> dict[str, Any]:
    """The golden request and answer: from ``manifest`` (its golden files and tolerance), then
    ``request.inputs`` and ``expect`` (``outputs``, ``atol``, ``rtol``, ``text``) where given."""
    base = None
    inputs: tuple[Tensor, ...] = ()
    outputs: tuple[Tensor, ...] = ()
    atol, rtol = DEFAULT_ATOL, DEFAULT_RTOL
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
    return {"inputs": inputs, "outputs": outputs, "atol": atol, "rtol": rtol, "expect_text": expect_text}


def _rules(cfg: WorkloadConfig, sec: Section) -> WorkloadConfig:
    """What each kind needs (only when enabled)."""
    kind = cfg.kind
    if cfg.enabled:
        if kind in ("kserve-http", "openai", "http-ready") and not cfg.url:
            sec.error("url", f"required for kind {kind}")
        if kind == "kserve-grpc" and not cfg.target:
            sec.error("target", "required for kind kserve-grpc (host:port)")
        if kind in ("kserve-http", "kserve-grpc", "openai") and not cfg.model:
            sec.error("model", f"required for kind {kind}")
        if kind in ("kserve-http", "kserve-grpc") and not cfg.inputs and not cfg.check_ready:
            sec.error("request", "give request.inputs (or manifest) or keep check_ready on")
    return cfg


def parse_workload_config(sec: Section) -> WorkloadConfig:
    """Read ``workload:``; every problem is recorded on ``sec`` naming its field."""
    golden = _golden(sec)
    return read(WorkloadConfig, sec, check=lambda cfg, s: _rules(dataclasses.replace(cfg, **golden), s))
