"""`engine inspect | manifest | build` on real files, through argparse, checking exit codes."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sidecar.engine.cli import add_engine_subcommands, run_engine_command
from sidecar.engine.manifest import load_manifest
from sidecar.engine.plan import make_plan_header

CANARY = Path(__file__).resolve().parents[2] / "engines" / "canary"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="trt-health-sidecar")
    sub = parser.add_subparsers(dest="command")
    add_engine_subcommands(sub)
    return run_engine_command(parser.parse_args(argv))


def test_manifest_then_inspect_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A manifest written for a plan-like file inspects clean (0); corrupting it gives 1."""
    plan = tmp_path / "m.plan"
    plan.write_bytes(make_plan_header((10, 13, 0, 35)) + b"\1" * 5000)
    assert (
        run(
            [
                "engine",
                "manifest",
                str(plan),
                "--name",
                "m",
                "--inputs",
                "x:float32:1x16",
                "--compute-capability",
                "9.0",
            ]
        )
        == 0
    )
    man = load_manifest(tmp_path / "m.plan.manifest.yaml")
    assert man.tensorrt_version == "10.13.0.35"  # from the header
    assert man.sha256 == hashlib.sha256(plan.read_bytes()).hexdigest()
    assert man.inputs[0].shape == (1, 16)
    capsys.readouterr()
    assert (
        run(
            [
                "engine",
                "inspect",
                str(plan),
                "--json",
                "--tensorrt-version",
                "10.13.0.35",
                "--compute-capability",
                "9.0",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [] and report["header"]["tensorrt_version"] == "10.13.0.35"
    plan.write_bytes(make_plan_header((10, 13, 0, 35)) + b"\2" * 5000)
    assert run(["engine", "inspect", str(plan), "--json"]) == 1
    assert "EngineChecksumMismatch" in json.loads(capsys.readouterr().out)["problems"]


def test_inspect_wrong_runtime_and_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """inspect reports what this machine would decide: other runtime, other GPU -> exit 1."""
    plan = tmp_path / "m.plan"
    plan.write_bytes(make_plan_header((10, 13, 0, 35)) + b"\1" * 100)
    assert run(["engine", "manifest", str(plan), "--name", "m", "--compute-capability", "9.0"]) == 0
    capsys.readouterr()
    code = run(
        ["engine", "inspect", str(plan), "--tensorrt-version", "11.4.0.106", "--compute-capability", "8.9"]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "EngineVersionMismatch" in out and "EngineArchMismatch" in out


def test_inspect_not_a_plan_without_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A garbage .engine file with no manifest is EngineNotAPlan (exit 1)."""
    f = tmp_path / "x.engine"
    f.write_bytes(b"\x89PNG" + b"\0" * 100)
    assert run(["engine", "inspect", str(f)]) == 1
    assert "EngineNotAPlan" in capsys.readouterr().out


def test_inspect_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --manifest that does not exist is a usage error (2) naming the flag."""
    assert run(["engine", "inspect", str(tmp_path / "a"), "--manifest", str(tmp_path / "m")]) == 2
    assert "--manifest" in capsys.readouterr().err


def test_manifest_bad_tensor_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --inputs value is a usage error (2) naming the flag."""
    plan = tmp_path / "m.plan"
    plan.write_bytes(make_plan_header((10, 13, 0, 35)))
    assert run(["engine", "manifest", str(plan), "--name", "m", "--inputs", "x:float99:1"]) == 2
    assert "--inputs" in capsys.readouterr().err


def test_manifest_from_onnx_reference_computes_goldens(tmp_path: Path) -> None:
    """With the canary ONNX model as reference, I/O comes from the model and golden outputs
    are computed with ONNX Runtime from the given golden input (they match the shipped ones)."""
    model = tmp_path / "canary.onnx"
    shutil.copyfile(CANARY / "canary.onnx", model)
    code = run(
        [
            "engine",
            "manifest",
            str(model),
            "--name",
            "canary",
            "--golden-input",
            f"x={CANARY / 'golden_input.npy'}",
        ]
    )
    assert code == 0
    man = load_manifest(tmp_path / "canary.onnx.manifest.yaml")
    assert man.format == "onnx"
    assert [(t.name, t.shape) for t in man.inputs] == [("x", (1, 16))]
    assert [t.name for t in man.outputs] == ["y"]
    got = np.load(man.golden_output_paths()["y"])
    want = np.load(CANARY / "golden_output.npy")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_build_without_tensorrt_builder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """engine build says plainly that the TensorRT builder is not installed here (exit 2)."""
    from sidecar.engine.cli import import_tensorrt_builder

    if import_tensorrt_builder() is not None:
        pytest.skip("the full TensorRT builder is installed on this machine")
    code = run(
        [
            "engine",
            "build",
            str(CANARY / "canary.onnx"),
            "--out",
            str(tmp_path / "c.plan"),
            "--version-compatible",
        ]
    )
    assert code == 2
    assert "builder" in capsys.readouterr().err
    assert not (tmp_path / "c.plan").exists()
