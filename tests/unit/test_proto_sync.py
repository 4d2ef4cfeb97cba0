"""The generated diagnostics stubs match proto/ (run `make proto` after editing the .proto)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_code_is_in_sync(tmp_path: Path) -> None:
    """Regenerating from proto/ gives byte-identical files to the committed ones."""
    shutil.copytree(REPO / "proto", tmp_path / "proto")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            "proto/sidecar/proto/diagnostics.proto",
        ],
        cwd=tmp_path,
        check=True,
    )
    for name in ("diagnostics_pb2.py", "diagnostics_pb2.pyi", "diagnostics_pb2_grpc.py"):
        fresh = (tmp_path / "sidecar" / "proto" / name).read_text()
        committed = (REPO / "sidecar" / "proto" / name).read_text()
        assert fresh == committed, f"sidecar/proto/{name} is stale: run `make proto`"
