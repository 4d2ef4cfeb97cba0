"""Regenerate kserve_v2_pb2.py / .pyi from kserve_v2.proto (needs grpcio-tools; dev only)."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    from grpc_tools import protoc

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
        out = here / "kserve_v2_pb2.py"
        out.write_text("# ruff: noqa\n# mypy: ignore-errors\n" + out.read_text(), encoding="utf-8")
    return rc


if __name__ == "__main__":
    sys.exit(main())
