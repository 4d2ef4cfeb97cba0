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
import sys
from pathlib import Path
from typing import Any

from sidecar.engine.cli.build import build_command, import_tensorrt_builder
from sidecar.engine.cli.common import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, UsageError
from sidecar.engine.cli.inspect import inspect_command, inspect_engine
from sidecar.engine.cli.write_manifest import manifest_command, parse_tensor_flag
from sidecar.engine.manifest import FORMATS, HARDWARE_COMPAT

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "UsageError",
    "add_engine_subcommands",
    "import_tensorrt_builder",
    "inspect_engine",
    "parse_tensor_flag",
    "run_engine_command",
]


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
