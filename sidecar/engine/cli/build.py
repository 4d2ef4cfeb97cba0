"""``engine build ONNX --out PLAN``: ONNX -> TensorRT plan + manifest, with the full TensorRT
builder only (the lean runtime cannot build; where the builder is missing it says so, exit 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sidecar.engine.cli.common import EXIT_PROBLEMS, EXIT_USAGE, UsageError
from sidecar.engine.cli.write_manifest import manifest_command

__all__ = ["build_command", "build_plan", "import_tensorrt_builder"]


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
