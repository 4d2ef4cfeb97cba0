"""Every bench/ module imports (in a fresh interpreter, as `python -m bench.X` would): a module
that parses another file's source, or needs a GPU to import, breaks here rather than on the GPU
machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(
    f"bench.{p.stem}" for p in (REPO / "bench").glob("*.py") if p.stem not in ("__init__", "__main__")
)


def test_bench_modules_are_found() -> None:
    assert {"bench.gpu", "bench.soak", "bench.run", "bench.procs"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_bench_module_imports(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"import {module} failed:\n{proc.stderr[-3000:]}"
