"""Messages between the canary supervisor (serving process) and its worker (child process).

One JSON object per line. The supervisor writes requests to the worker's stdin; the worker
answers on its stdout, which it reserves for the protocol (its own fd 1 is pointed at stderr
at start, so C libraries that print cannot corrupt the stream). Arrays travel as raw bytes in
base64 with dtype and shape: canary tensors are tiny.

Requests (``op``):

- ``load``: choose and load a runner, and the production engines. Fields of
  :class:`LoadRequest` (``productions``: a list; the one-engine form ``production`` is read too).
- ``run``: one canary. ``id``, ``fault`` (simulation only; ``None`` in production). The reply's
  ``engine_outputs`` holds each loaded production engine's outputs by its manifest path.
- ``load_engine``: load one more production engine (``production``: a :class:`ProductionSpec`)
  into the running worker: a released one whose files changed, to verify it again.
- ``release``: drop the production engine ``manifest`` (verify-then-release); without
  ``manifest``, every production engine.
- ``exit``: leave the main loop.

Replies carry the same ``op`` plus ``ok``; a failure carries ``error`` (:class:`WorkerError`
fields). Every reply carries ``rss_bytes`` (the worker's resident memory) and
``gpu_memory_bytes`` (per GPU, as the worker measured it).
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

OP_LOAD = "load"
OP_RUN = "run"
OP_RELEASE = "release"
OP_LOAD_ENGINE = "load_engine"
OP_EXIT = "exit"

# Fault modes the scenario file may set (simulation only). ``gpu_fault`` values are test-only
# real GPU faults honoured by the CUDA kernel runner when the worker runs with --allow-faults.
FAULT_MODES = ("ok", "hang", "crash", "wrong", "drift", "slow", "leak")
SDC_FLIP_PREFIX = "sdc_flip:"


class GpuFaultNames(tuple[str, ...]):
    """The fixed GPU fault names, plus ``sdc_flip:<sm>:<bit>[:int8|bf16]`` (at most 64
    characters) for the tensor-core runner (see :mod:`sidecar.canary.sdc`)."""

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str) and item.startswith(SDC_FLIP_PREFIX):
            return len(item) <= 64
        return tuple.__contains__(self, item)


GPU_FAULTS = GpuFaultNames(("none", "illegal_address", "spin"))


@dataclass(frozen=True, slots=True)
class WorkerError:
    """Why the worker could not do what it was asked.

    ``sticky`` means the worker's CUDA context is unusable (e.g. ``CUDA_ERROR_ILLEGAL_ADDRESS``):
    the supervisor must replace the process, not retry in it.
    """

    reason: str
    message: str
    cuda_error: str | None = None
    sticky: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> WorkerError:
        if not isinstance(raw, dict):
            return cls(reason="WorkerProtocolError", message=f"bad error field: {raw!r}")
        return cls(
            reason=str(raw.get("reason") or "WorkerError"),
            message=str(raw.get("message") or ""),
            cuda_error=raw.get("cuda_error"),
            sticky=bool(raw.get("sticky", False)),
            labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
        )


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A simulated misbehaviour for one request (scenario ``canary:`` key)."""

    mode: str = "ok"
    delay_ms: float = 0.0
    leak_mib: float = 16.0
    gpu_fault: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> FaultSpec | None:
        if not isinstance(raw, dict):
            return None
        return cls(
            mode=str(raw.get("mode", "ok")),
            delay_ms=float(raw.get("delay_ms", 0.0)),
            leak_mib=float(raw.get("leak_mib", 16.0)),
            gpu_fault=str(raw.get("gpu_fault", "none")),
        )


@dataclass(frozen=True, slots=True)
class ProductionSpec:
    """One opt-in production engine: its manifest (also its key in replies) and the GPU
    memory it may take."""

    manifest: str
    memory_budget_mib: float
    release_after_verify: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ProductionSpec:
        return cls(
            manifest=str(raw["manifest"]),
            memory_budget_mib=float(raw.get("memory_budget_mib", 0.0)),
            release_after_verify=bool(raw.get("release_after_verify", False)),
        )


@dataclass(frozen=True, slots=True)
class LoadRequest:
    """What the worker should load. Paths are absolute strings."""

    runner: str  # auto | onnxruntime | cuda-kernel | tensorrt
    manifest: str | None  # ONNX canary model manifest (onnxruntime runner)
    tensorrt_manifest: str | None  # tiny canary plan manifest (tensorrt runner)
    production: ProductionSpec | None = None
    allow_engine_host_code: bool = False
    devices: tuple[int, ...] = ()  # CUDA ordinals for the kernel canary; () = all visible
    warmup_runs: int = 2
    # tensor-core SDC canary (runner tensor-core): grid, test-only injection, numpy model
    tc_blocks_per_sm: int = 8
    tc_allow_injection: bool = False
    tc_simulated_sms: int = 0  # > 0: the numpy model of the kernel (simulation only)
    determinism_check: bool = True  # onnxruntime / tensorrt: run twice at load, compare bits
    productions: tuple[ProductionSpec, ...] = ()  # several production engines (with production)

    def engines(self) -> tuple[ProductionSpec, ...]:
        """Every production engine to load: ``production`` first, then ``productions``."""
        first = (self.production,) if self.production is not None else ()
        return first + tuple(p for p in self.productions if p != self.production)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["op"] = OP_LOAD
        out["devices"] = list(self.devices)
        out["productions"] = [p.to_dict() for p in self.productions]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LoadRequest:
        prod = raw.get("production")
        more = raw.get("productions") or []
        return cls(
            runner=str(raw.get("runner", "auto")),
            manifest=raw.get("manifest"),
            tensorrt_manifest=raw.get("tensorrt_manifest"),
            production=ProductionSpec.from_dict(prod) if isinstance(prod, dict) else None,
            allow_engine_host_code=bool(raw.get("allow_engine_host_code", False)),
            devices=tuple(int(d) for d in raw.get("devices") or ()),
            warmup_runs=int(raw.get("warmup_runs", 2)),
            tc_blocks_per_sm=int(raw.get("tc_blocks_per_sm", 8)),
            tc_allow_injection=bool(raw.get("tc_allow_injection", False)),
            tc_simulated_sms=int(raw.get("tc_simulated_sms", 0)),
            determinism_check=bool(raw.get("determinism_check", True)),
            productions=tuple(ProductionSpec.from_dict(p) for p in more if isinstance(p, dict)),
        )


def encode_array(arr: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(arr)
    return {
        "dtype": a.dtype.str,
        "shape": list(a.shape),
        "b64": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def decode_array(raw: Any) -> np.ndarray:
    """Rebuild an array. Raises ``ValueError`` on anything malformed."""
    if not isinstance(raw, dict):
        raise ValueError(f"array must be an object, got {type(raw).__name__}")
    try:
        dtype = np.dtype(raw["dtype"])
        shape = tuple(int(d) for d in raw["shape"])
        data = base64.b64decode(raw["b64"], validate=True)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed array: {exc}") from exc
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"array has {len(data)} bytes, shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()


def encode_arrays(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    return {k: encode_array(v) for k, v in arrays.items()}


def decode_arrays(raw: Any) -> dict[str, np.ndarray]:
    if not isinstance(raw, dict):
        raise ValueError("outputs must be an object")
    return {str(k): decode_array(v) for k, v in raw.items()}


def dumps(message: dict[str, Any]) -> bytes:
    """One protocol line."""
    return json.dumps(message, separators=(",", ":")).encode("utf-8") + b"\n"


def loads(line: bytes) -> dict[str, Any]:
    """Parse one protocol line. Raises ``ValueError`` when it is not a JSON object."""
    try:
        msg = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not isinstance(msg, dict):
        raise ValueError("message must be a JSON object")
    return msg
