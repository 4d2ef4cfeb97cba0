"""``engine inspect | manifest | build``: the engine tools of the CLI (exit codes returned).

- ``engine inspect FILE`` prints what the plan header and the manifest say, and what this
  machine would decide (the same verification the sidecar runs). 0 ok, 1 problems, 2 usage.
- ``engine manifest FILE --name N`` writes a manifest: checksum, size, header version, I/O
  (from the engine when TensorRT can load it, in a child process; else from ``--input`` /
  ``--output`` flags or an ONNX ``--reference`` model), golden inputs and outputs (outputs
  computed with ONNX Runtime from the reference model).
- ``engine build ONNX --out PLAN`` needs the full TensorRT builder (``tensorrt`` package); the
  lean runtime cannot build. Where it is missing the command says so and exits 2.

The serving process never imports TensorRT; only these commands may (and ``manifest`` does it
in a child process, because deserialising on a machine without a GPU can segfault).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from sidecar.config import ConfigError
from sidecar.core.errors import SidecarError
from sidecar.engine.config import EnginesConfig, EngineSpec
from sidecar.engine.files import MISSING, path_problem
from sidecar.engine.manifest import (
    DTYPES,
    FORMATS,
    HARDWARE_COMPAT,
    EngineManifest,
    TensorSpec,
    Tolerance,
    dump_manifest,
    load_manifest,
    read_manifest,
)
from sidecar.engine.plan import read_plan_header

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


class UsageError(SidecarError):
    """Bad command-line input; the message names the flag."""


def add_engine_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``engine {inspect,manifest,build}`` to an argparse subparsers object."""
    engine: argparse.ArgumentParser = subparsers.add_parser(
        "engine", help="inspect, describe or build engine files"
    )
    sub = engine.add_subparsers(dest="engine_command", metavar="{inspect,manifest,build}")
    sub.required = True

    ins = sub.add_parser("inspect", help="what the header and manifest say; what we would decide")
    ins.add_argument("file", type=Path, help="engine (plan) or ONNX file")
    ins.add_argument("--manifest", type=Path, help="manifest (default: FILE.manifest.yaml)")
    ins.add_argument("--json", action="store_true", help="print JSON")
    ins.add_argument("--tensorrt-version", help="runtime TensorRT version to compare with")
    ins.add_argument("--compute-capability", help="GPU compute capability, e.g. 9.0")
    ins.add_argument("--hash-timeout", type=float, default=600.0, help="seconds (default 600)")

    man = sub.add_parser("manifest", help="write a manifest for an engine file")
    man.add_argument("file", type=Path, help="engine (plan) or ONNX file")
    man.add_argument("--name", required=True, help="engine name")
    man.add_argument("--out", type=Path, help="manifest path (default: FILE.manifest.yaml)")
    man.add_argument("--format", choices=FORMATS, help="default: from the file suffix")
    man.add_argument("--inputs", nargs="*", default=[], metavar="NAME:DTYPE:D1xD2", help="input tensors")
    man.add_argument("--outputs", nargs="*", default=[], metavar="NAME:DTYPE:D1xD2", help="output tensors")
    man.add_argument(
        "--golden-input",
        action="append",
        default=[],
        metavar="NAME=FILE.npy",
        help="golden input (repeatable); copied next to the manifest",
    )
    man.add_argument("--reference", type=Path, help="ONNX reference model (I/O and goldens)")
    man.add_argument("--tensorrt-version", help="default: from the plan header")
    man.add_argument("--compute-capability", help="GPU the plan was built for, e.g. 9.0")
    man.add_argument("--hardware-compatibility", choices=HARDWARE_COMPAT, default="none")
    man.add_argument("--version-compatible", action="store_true")
    man.add_argument("--atol", type=float, default=1e-4)
    man.add_argument("--rtol", type=float, default=1e-3)
    man.add_argument("--latency-budget-ms", type=float)
    man.add_argument("--seed", type=int, default=0, help="seed for generated golden inputs")
    man.add_argument("--no-tensorrt", action="store_true", help="do not try TensorRT to read the I/O")

    bld = sub.add_parser("build", help="ONNX -> TensorRT plan + manifest (full TensorRT only)")
    bld.add_argument("onnx", type=Path)
    bld.add_argument("--out", type=Path, required=True, help="plan file to write")
    bld.add_argument("--name", help="engine name (default: the plan's stem)")
    bld.add_argument("--version-compatible", action="store_true")
    bld.add_argument("--fp16", action="store_true", help="TensorRT 10 weak typing only")
    bld.add_argument("--hardware-compatibility", choices=HARDWARE_COMPAT, default="none")
    bld.add_argument("--workspace-mib", type=int, default=512)
    return engine


def run_engine_command(args: argparse.Namespace) -> int:
    """Run the parsed ``engine ...`` command; returns the process exit code."""
    try:
        cmd = getattr(args, "engine_command", None)
        if cmd == "inspect":
            return inspect_command(args)
        if cmd == "manifest":
            return manifest_command(args)
        if cmd == "build":
            return build_command(args)
        raise UsageError("engine: give one of inspect, manifest, build")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


# -- inspect ----------------------------------------------------------------------------------


def default_manifest_path(file: Path) -> Path | None:
    for cand in (file.with_name(file.name + ".manifest.yaml"), file.parent / "manifest.yaml"):
        if cand.exists():
            return cand
    return None


def inspect_engine(
    file: Path,
    manifest: Path | None,
    *,
    tensorrt_version: str | None = None,
    compute_capability: str | None = None,
    hash_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Everything ``engine inspect`` reports, as a JSON-able dict; ``problems`` lists reasons."""
    from sidecar.engine.component import EngineComponent

    report: dict[str, Any] = {"file": str(file), "manifest": str(manifest) if manifest else None}
    # stat before any open: a FIFO would block, a device or a folder is no engine
    problem = path_problem(file)
    if problem is not None:
        report["file_kind"] = problem
    else:
        try:
            report["header"] = read_plan_header(file).to_dict()
        except OSError as exc:
            report["header"] = {"error": str(exc)}
    if manifest is not None:
        try:
            report["manifest_content"] = read_manifest(manifest).to_dict()
        except (ConfigError, OSError) as exc:
            report["manifest_error"] = str(exc)
    spec = EngineSpec("inspect", manifest=manifest) if manifest else EngineSpec("inspect", file=file)
    cfg = EnginesConfig(
        engines=(spec,),
        hash_timeout_s=hash_timeout_s,
        hash_min_interval_s=0.0,
        stable_window_s=0.2,
        tensorrt_version=tensorrt_version,
        compute_capability=compute_capability,
    )
    comp = EngineComponent(cfg, registry=CollectorRegistry())
    check = comp.checks()[0]
    results = asyncio.run(_run_once(check))
    decisions = []
    for r in results:
        decisions.append(
            {
                "condition": r.name.split("/", 2)[-1],
                "status": r.status.value,
                "severity": r.severity.name.lower(),
                "reason": r.reason,
                "message": r.message,
            }
        )
    report["decisions"] = decisions
    report["problems"] = sorted(
        {d["reason"] for d in decisions if d["status"] != "ok" and d["severity"] != "info"}
    )
    return report


async def _run_once(check: Any) -> list[Any]:
    return list(await check.run())


def inspect_command(args: argparse.Namespace) -> int:
    file: Path = args.file
    manifest: Path | None = args.manifest
    if manifest is not None:
        problem = path_problem(manifest)
        if problem == MISSING:
            raise UsageError(f"--manifest: {manifest} does not exist")
        if problem is not None:
            raise UsageError(f"--manifest: {manifest} is {problem}, not a regular file")
    if manifest is None:
        manifest = default_manifest_path(file)
    report = inspect_engine(
        file,
        manifest,
        tensorrt_version=args.tensorrt_version,
        compute_capability=args.compute_capability,
        hash_timeout_s=args.hash_timeout,
    )
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        kind = report.get("file_kind")
        print(f"file:      {file}" + (f"  ({kind})" if kind else ""))
        print(f"manifest:  {manifest or '(none found)'}")
        hdr = report.get("header") or {}
        if hdr:
            print(
                f"header:    plan={hdr.get('is_plan')} tensorrt={hdr.get('tensorrt_version')} "
                f"{hdr.get('problem') or ''}  (header layout is advisory)"
            )
        if "manifest_error" in report:
            print(f"manifest error: {report['manifest_error']}")
        for d in report["decisions"]:
            flag = "ok  " if d["status"] == "ok" else d["status"].upper()[:4]
            print(f"  {flag} {d['condition']:<9} {d['reason'] or '-':<24} {d['message']}")
        print("verdict:   " + ("OK" if not report["problems"] else ", ".join(report["problems"])))
    return EXIT_PROBLEMS if report["problems"] else EXIT_OK


# -- manifest ---------------------------------------------------------------------------------


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


# -- build ------------------------------------------------------------------------------------


def import_tensorrt_builder() -> Any | None:
    """The full ``tensorrt`` module when it has a Builder (lean / dispatch runtimes do not)."""
    try:
        import tensorrt as trt
    except ImportError:
        return None
    return trt if hasattr(trt, "Builder") else None


def build_command(args: argparse.Namespace) -> int:
    onnx_path: Path = args.onnx
    if not onnx_path.is_file():
        raise UsageError(f"ONNX: {onnx_path} does not exist")
    trt = import_tensorrt_builder()
    if trt is None:
        print(
            "error: engine build needs the full TensorRT builder (the 'tensorrt' Python package "
            "with tensorrt.Builder) and a GPU. It is not installed here: the lean runtime "
            "(tensorrt_lean) can only run version-compatible plans, never build them. Build on "
            "a machine with TensorRT (e.g. the NGC TensorRT container), then run "
            "'engine manifest' here.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return build_plan(trt, args)


def build_plan(trt: Any, args: argparse.Namespace) -> int:
    """Build with the TensorRT 10/11 builder API: ONNX -> serialized plan, then a manifest."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(str(trt.__version__).split(".")[0])
    flags = 0
    creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
    if args.fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            print(
                f"error: --fp16: TensorRT {trt.__version__} has no weak typing (removed in 11.0);"
                " give an ONNX model with FP16 types instead",
                file=sys.stderr,
            )
            return EXIT_USAGE
    elif creation is not None and hasattr(creation, "STRONGLY_TYPED"):
        flags |= 1 << int(creation.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(args.onnx)):
        for i in range(parser.num_errors):
            print(f"error: ONNX parser: {parser.get_error(i)}", file=sys.stderr)
        return EXIT_PROBLEMS
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args.workspace_mib << 20)
    if args.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if args.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    level = {
        "none": "NONE",
        "ampere+": "AMPERE_PLUS",
        "same-compute-capability": "SAME_COMPUTE_CAPABILITY",
    }[args.hardware_compatibility]
    config.hardware_compatibility_level = getattr(trt.HardwareCompatibilityLevel, level)
    # Dynamic inputs: one profile pinned to the canary shape (dynamic dims -> 1).
    profile = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = tuple(t.shape)
        if any(d < 0 for d in shape):
            canary = tuple(d if d > 0 else 1 for d in shape)
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(t.name, canary, canary, canary)
    if profile is not None:
        config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        print("error: TensorRT could not build the engine (see the log above)", file=sys.stderr)
        return EXIT_PROBLEMS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(bytes(blob))
    print(f"wrote {args.out} (TensorRT {trt.__version__}, major {major})")
    margs = argparse.Namespace(
        file=args.out,
        name=args.name or args.out.stem,
        out=None,
        format="tensorrt-plan",
        inputs=[],
        outputs=[],
        golden_input=[],
        reference=args.onnx,
        tensorrt_version=None,
        compute_capability=_device_cc(),
        hardware_compatibility=args.hardware_compatibility,
        version_compatible=args.version_compatible,
        atol=1e-2 if args.fp16 else 1e-4,
        rtol=1e-2 if args.fp16 else 1e-3,
        latency_budget_ms=None,
        seed=0,
        no_tensorrt=False,
    )
    return manifest_command(margs)


def _device_cc() -> str | None:
    try:
        from cuda.bindings import runtime as cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        return f"{props.major}.{props.minor}"
    except Exception:
        return None
