"""``engine manifest FILE --name N``: write a manifest (checksum, size, header version, I/O,
golden inputs and outputs computed with ONNX Runtime from a reference model)."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.engine.cli.common import EXIT_OK, UsageError
from sidecar.engine.files import MISSING, path_problem
from sidecar.engine.manifest import (
    DTYPES,
    EngineManifest,
    TensorSpec,
    Tolerance,
    dump_manifest,
    load_manifest,
)
from sidecar.engine.plan import read_plan_header

__all__ = ["manifest_command", "onnx_io", "parse_tensor_flag", "tensorrt_io"]


def parse_tensor_flag(text: str, flag: str) -> TensorSpec:
    """``name:dtype:1x16`` -> TensorSpec (``UsageError`` naming the flag otherwise)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise UsageError(f"{flag}: {text!r} must be NAME:DTYPE:D1xD2...")
    name, dtype, dims = parts
    if dtype not in DTYPES:
        raise UsageError(f"{flag}: dtype {dtype!r} must be one of {', '.join(DTYPES)}")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise UsageError(f"{flag}: shape {dims!r} must be like 1x3x224x224") from None
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"{flag}: every dimension of {dims!r} must be > 0")
    return TensorSpec(name, dtype, shape)


_ONNX_DTYPES = {
    1: "float32",
    10: "float16",
    16: "bfloat16",
    3: "int8",
    6: "int32",
    7: "int64",
    9: "bool",
    2: "uint8",
}


def onnx_io(model_path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...], list[str]]:
    """Inputs and outputs of an ONNX model; dynamic dimensions become 1 (noted)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    notes: list[str] = []

    def specs(values: Any) -> tuple[TensorSpec, ...]:
        out = []
        for v in values:
            if v.name in inits:
                continue
            tt = v.type.tensor_type
            dtype = _ONNX_DTYPES.get(tt.elem_type)
            if dtype is None:
                raise UsageError(f"--reference: tensor {v.name!r} has unsupported ONNX type")
            shape = []
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value > 0:
                    shape.append(int(d.dim_value))
                else:
                    shape.append(1)
                    notes.append(f"{v.name}: dynamic dimension {d.dim_param or '?'} set to 1")
            out.append(TensorSpec(v.name, dtype, tuple(shape)))
        return tuple(out)

    return specs(model.graph.input), specs(model.graph.output), notes


_TRT_IO_SCRIPT = r"""
import json, sys
trt = None
for name in ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings"):
    try:
        trt = __import__(name)
        break
    except ImportError:
        pass
if trt is None:
    print(json.dumps({"error": "TensorRT is not importable"})); sys.exit(0)
logger = trt.Logger(trt.Logger.ERROR)
rt = trt.Runtime(logger)
if sys.argv[2] == "1":
    rt.engine_host_code_allowed = True
eng = rt.deserialize_cuda_engine(open(sys.argv[1], "rb").read())
if eng is None:
    print(json.dumps({"error": "deserialisation failed"})); sys.exit(0)
io = []
for i in range(eng.num_io_tensors):
    n = eng.get_tensor_name(i)
    io.append({"name": n, "input": eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT,
               "dtype": str(eng.get_tensor_dtype(n)), "shape": list(eng.get_tensor_shape(n))})
print(json.dumps({"io": io, "version": trt.__version__}))
"""

_TRT_DTYPES = {
    "DataType.FLOAT": "float32",
    "DataType.HALF": "float16",
    "DataType.BF16": "bfloat16",
    "DataType.INT8": "int8",
    "DataType.INT32": "int32",
    "DataType.INT64": "int64",
    "DataType.BOOL": "bool",
    "DataType.UINT8": "uint8",
}


def tensorrt_io(
    plan: Path, *, host_code: bool, timeout_s: float = 120.0
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]] | str:
    """Read I/O from the engine with TensorRT, in a child process. A string says why not."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _TRT_IO_SCRIPT, str(plan), "1" if host_code else "0"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "TensorRT did not answer in time"
    if proc.returncode != 0:
        return f"TensorRT child exited with {proc.returncode}"
    try:
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "TensorRT child printed no result"
    if "error" in doc:
        return str(doc["error"])
    ins: list[TensorSpec] = []
    outs: list[TensorSpec] = []
    for t in doc["io"]:
        dtype = _TRT_DTYPES.get(t["dtype"], "float32")
        shape = tuple(d if d > 0 else 1 for d in t["shape"])
        (ins if t["input"] else outs).append(TensorSpec(t["name"], dtype, shape))
    return tuple(ins), tuple(outs)


def _has_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


def manifest_command(args: argparse.Namespace) -> int:
    file: Path = args.file
    problem = path_problem(file)
    if problem is not None:
        raise UsageError(
            f"FILE: {file} does not exist"
            if problem == MISSING
            else f"FILE: {file} is {problem}, not a regular file"
        )
    out: Path = args.out or file.with_name(file.name + ".manifest.yaml")
    folder = out.parent
    fmt = args.format or ("onnx" if file.suffix.lower() == ".onnx" else "tensorrt-plan")
    data_sha = hashlib.sha256()
    with file.open("rb") as f:
        for chunk in iter(lambda: f.read(4 << 20), b""):
            data_sha.update(chunk)
    trt_version = args.tensorrt_version
    if fmt == "tensorrt-plan":
        hdr = read_plan_header(file)
        if not hdr.is_plan:
            print(f"warning: {file} is not a TensorRT plan: {hdr.problem}", file=sys.stderr)
        if trt_version is None and hdr.tensorrt_version:
            trt_version = hdr.tensorrt_version
    inputs = tuple(parse_tensor_flag(t, "--inputs") for t in args.inputs)
    outputs = tuple(parse_tensor_flag(t, "--outputs") for t in args.outputs)
    reference: Path | None = args.reference
    if reference is None and fmt == "onnx":
        reference = file
    if reference is not None and not reference.is_file():
        raise UsageError(f"--reference: {reference} does not exist")
    if not inputs and fmt == "tensorrt-plan" and not args.no_tensorrt and _has_gpu():
        got = tensorrt_io(file, host_code=args.version_compatible)
        if isinstance(got, str):
            print(f"note: I/O not read from the engine: {got}", file=sys.stderr)
        else:
            inputs, outputs = got
    if not inputs and reference is not None:
        inputs, ref_outputs, notes = onnx_io(reference)
        outputs = outputs or ref_outputs
        for n in notes:
            print(f"note: {n}", file=sys.stderr)
    golden_in: dict[str, str] = {}
    golden_out: dict[str, str] = {}
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for item in args.golden_input:
        name, eq, src = item.partition("=")
        if not eq or not name or not src:
            raise UsageError(f"--golden-input: {item!r} must be NAME=FILE.npy")
        src_path = Path(src)
        if not src_path.is_file():
            raise UsageError(f"--golden-input: {src} does not exist")
        try:
            arrays[name] = np.load(src_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--golden-input: {src} is not a .npy array: {exc}") from None
        dest = folder / f"golden_input_{name}.npy"
        if src_path.resolve() != dest.resolve():
            shutil.copyfile(src_path, dest)
        golden_in[name] = dest.name
    if reference is not None and inputs:
        rng = np.random.default_rng(args.seed)
        for spec in inputs:
            if spec.name not in arrays:
                arr = rng.standard_normal(spec.shape).astype(spec.dtype)
                arrays[spec.name] = arr
                np.save(folder / f"golden_input_{spec.name}.npy", arr)
                golden_in[spec.name] = f"golden_input_{spec.name}.npy"
        import onnxruntime as ort

        sess = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        results = sess.run(names, {k: v for k, v in arrays.items()})
        for name, value in zip(names, results, strict=True):
            np.save(folder / f"golden_output_{name}.npy", np.asarray(value))
            golden_out[name] = f"golden_output_{name}.npy"
    try:
        file_rel = str(file.resolve().relative_to(folder.resolve()))
    except ValueError:
        file_rel = str(file.resolve())
    manifest = EngineManifest(
        name=args.name,
        file=file_rel,
        directory=folder,
        format=fmt,
        sha256=data_sha.hexdigest(),
        size=file.stat().st_size,
        tensorrt_version=trt_version,
        compute_capability=args.compute_capability,
        hardware_compatibility=args.hardware_compatibility,
        version_compatible=args.version_compatible,
        inputs=inputs,
        outputs=outputs,
        golden_inputs=golden_in,
        golden_outputs=golden_out,
        tolerance=Tolerance(atol=args.atol, rtol=args.rtol),
        latency_budget_ms=args.latency_budget_ms,
    )
    dump_manifest(manifest, out)
    load_manifest(out)  # what we wrote must parse
    print(f"wrote {out}")
    return EXIT_OK
