"""Regenerate kserve_v2_pb2.py / .pyi from kserve_v2.proto (needs grpcio-tools; dev only)."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    import importlib

    protoc = importlib.import_module("grpc_tools.protoc")

    here = Path(__file__).resolve().parent
    root = here.parent.parent
    rc = int(
        protoc.main(
            [
                "protoc",
                f"-I{root}",
                f"--python_out={root}",
                f"--pyi_out={root}",
                str(here / "kserve_v2.proto"),
            ]
        )
    )
    if rc == 0:
        # Generated code: keep linters and formatters off it.
        for name in ("kserve_v2_pb2.py", "kserve_v2_pb2.pyi"):
            out = here / name
            text = out.read_text(encoding="utf-8")
            out.write_text("# ruff: noqa\n# fmt: off\n# mypy: ignore-errors\n" + text, encoding="utf-8")
    return rc


if __name__ == "__main__":
    sys.exit(main())
