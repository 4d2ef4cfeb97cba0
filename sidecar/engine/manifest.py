"""The engine manifest: what an engine file is, and how to prove it still answers correctly.

One YAML file next to each engine (``<engine>.manifest.yaml`` or ``manifest.yaml`` in the
engine's folder). The schema is documented in ``engines/README.md``. Paths inside a manifest
are relative to the manifest's folder.

Example::

    name: canary
    file: canary.onnx            # the engine / model file
    format: onnx                 # onnx | tensorrt-plan
    sha256: 3b1f...              # of `file`
    size: 1234
    tensorrt_version: null       # "10.13.0" for plans: the version it was built with
    compute_capability: null     # "9.0" for plans
    hardware_compatibility: none # none | ampere+ | same-compute-capability
    version_compatible: false    # built with BuilderFlag.VERSION_COMPATIBLE
    inputs:
      - {name: x, dtype: float32, shape: [1, 16]}
    outputs:
      - {name: y, dtype: float32, shape: [1, 8]}
    golden:
      inputs: {x: golden_input_x.npy}
      outputs: {y: golden_output_y.npy}
    tolerance: {atol: 1.0e-4, rtol: 1.0e-3}
    latency_budget_ms: 50
    version: "2"                 # optional: the main server's version of this engine (actions)
    fallback: canary-fp16        # optional: the engine (under engines.list) to degrade to
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import ConfigError, Section
from sidecar.engine.files import MISSING, path_problem
from sidecar.runtime.safeload import MAX_MANIFEST_BYTES, UnsafeDocumentError, load_yaml_file

FORMATS = ("onnx", "tensorrt-plan")
HARDWARE_COMPAT = ("none", "ampere+", "same-compute-capability")
DTYPES = ("float32", "float16", "bfloat16", "int8", "int32", "int64", "bool", "uint8")


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One I/O tensor: name, dtype (numpy name) and the concrete canary shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Tolerance:
    atol: float = 1e-4
    rtol: float = 1e-3


@dataclass(frozen=True, slots=True)
class EngineManifest:
    """A parsed manifest. ``directory`` is where relative paths resolve."""

    name: str
    file: str
    directory: Path
    format: str = "tensorrt-plan"
    sha256: str | None = None
    size: int | None = None
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    golden_inputs: dict[str, str] = field(default_factory=dict)
    golden_outputs: dict[str, str] = field(default_factory=dict)
    tolerance: Tolerance = Tolerance()
    latency_budget_ms: float | None = None
    version: str | None = None
    fallback: str | None = None

    @property
    def path(self) -> Path:
        return self.directory / self.file

    def golden_input_paths(self) -> dict[str, Path]:
        return {k: self.directory / v for k, v in self.golden_inputs.items()}

    def golden_output_paths(self) -> dict[str, Path]:
        return {k: self.directory / v for k, v in self.golden_outputs.items()}

    def to_dict(self) -> dict[str, Any]:
        def tensors(specs: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in specs]

        return {
            "name": self.name,
            "file": self.file,
            "format": self.format,
            "sha256": self.sha256,
            "size": self.size,
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": self.compute_capability,
            "hardware_compatibility": self.hardware_compatibility,
            "version_compatible": self.version_compatible,
            "inputs": tensors(self.inputs),
            "outputs": tensors(self.outputs),
            "golden": {"inputs": dict(self.golden_inputs), "outputs": dict(self.golden_outputs)},
            "tolerance": {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol},
            "latency_budget_ms": self.latency_budget_ms,
            **({"version": self.version} if self.version is not None else {}),
            **({"fallback": self.fallback} if self.fallback is not None else {}),
        }


def _tensors(sec: Section, key: str) -> tuple[TensorSpec, ...]:
    out = []
    for item in sec.sub_list(key):
        name = item.text("name", "")
        if not name:
            item.error("name", "required")
        dtype = item.text("dtype", "float32", choices=DTYPES)
        shape = item.int_list("shape")
        if any(d <= 0 for d in shape):
            item.error("shape", f"every dimension must be > 0 (the canary shape), got {shape}")
        item.reject_unknown()
        out.append(TensorSpec(name=name, dtype=dtype, shape=tuple(shape)))
    return tuple(out)


def parse_manifest(raw: Any, directory: Path, *, where: str = "manifest") -> EngineManifest:
    """Parse a manifest mapping. Raises :class:`ConfigError` naming every bad field."""
    errors: list[str] = []
    sec = Section(raw, where, errors)
    name = sec.text("name", "")
    if not name:
        sec.error("name", "required")
    file = sec.text("file", "")
    if not file:
        sec.error("file", "required")
    fmt = sec.text("format", "tensorrt-plan", choices=FORMATS)
    sha = sec.opt_text("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        sec.error("sha256", "must be 64 lowercase hex digits")
    size = sec.integer("size", -1, minimum=-1) if sec.has("size") else None
    trt = sec.opt_text("tensorrt_version")
    cc = sec.opt_text("compute_capability")
    hw = sec.text("hardware_compatibility", "none", choices=HARDWARE_COMPAT)
    vc = sec.flag("version_compatible", False)
    inputs = _tensors(sec, "inputs")
    outputs = _tensors(sec, "outputs")
    golden = sec.sub("golden")
    gin = golden.sub("inputs")
    gout = golden.sub("outputs")
    golden_inputs = {str(k): gin.text(str(k), "") for k in gin.raw}
    golden_outputs = {str(k): gout.text(str(k), "") for k in gout.raw}
    golden.reject_unknown()
    tol = sec.sub("tolerance")
    tolerance = Tolerance(
        atol=tol.number("atol", 1e-4, minimum=0.0), rtol=tol.number("rtol", 1e-3, minimum=0.0)
    )
    tol.reject_unknown()
    budget = sec.number("latency_budget_ms", 0.0, minimum=0.0) if sec.has("latency_budget_ms") else None
    version = sec.opt_text("version")
    if version is not None and (not version or "/" in version or len(version) > 64):
        sec.error("version", f"must be a short name without '/', got {version!r}")
    fallback = sec.opt_text("fallback")
    if fallback is not None and (not fallback or "/" in fallback):
        sec.error("fallback", f"must be an engine name without '/', got {fallback!r}")
    sec.reject_unknown()
    if errors:
        raise ConfigError(errors)
    return EngineManifest(
        name=name,
        file=file,
        directory=directory,
        format=fmt,
        sha256=sha,
        size=size,
        tensorrt_version=trt,
        compute_capability=cc,
        hardware_compatibility=hw,
        version_compatible=vc,
        inputs=inputs,
        outputs=outputs,
        golden_inputs=golden_inputs,
        golden_outputs=golden_outputs,
        tolerance=tolerance,
        latency_budget_ms=budget,
        version=version,
        fallback=fallback,
    )


def load_manifest(path: Path) -> EngineManifest:
    """Read and parse a manifest file. Raises ``ConfigError`` (bad content) or ``OSError``."""
    try:
        raw = load_yaml_file(path, MAX_MANIFEST_BYTES)  # bounded: size, nesting, aliases
    except UnsafeDocumentError as exc:
        raise ConfigError([str(exc)]) from None
    return parse_manifest(raw, path.parent, where=str(path))


def read_manifest(path: Path) -> EngineManifest:
    """:func:`load_manifest` whose every content fault is a ``ConfigError`` with a short
    message: a non-UTF-8 byte, a nest too deep for the parser or any other parse bug is a
    finding for that engine, never an exception that escapes into a component (or the event
    loop). ``FileNotFoundError`` when it is missing; stats first, so a FIFO never blocks it."""
    problem = path_problem(path)
    if problem == MISSING:
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    if problem is not None:  # a FIFO would block the reader for ever; a folder is no manifest
        raise ConfigError([f"{path}: is {problem}, not a regular file"])
    try:
        return load_manifest(path)
    except (ConfigError, OSError):
        raise
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"]) from None
    except Exception as exc:
        raise ConfigError([f"{path}: cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}"]) from None


def dump_manifest(manifest: EngineManifest, path: Path) -> None:
    """Write a manifest atomically (temp file + rename) so watchers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(manifest.to_dict(), sort_keys=False), encoding="utf-8")
    tmp.replace(path)
