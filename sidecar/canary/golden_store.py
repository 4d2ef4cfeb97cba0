"""The goldens the judge compares with, read from their files off the event loop.

- :class:`CanaryGoldens`: the canary's own golden of each runner (the kernel canary's is
  computed, the ONNX / TensorRT canaries' come from their manifests), read once on the first
  round of that runner and kept for the component's life (a reload builds a new component).
  A read that fails is not kept: the next round tries again.
- :class:`ProductionGoldens`: one opt-in production engine's manifest and golden outputs,
  kept while their files are unchanged (size, mtime, inode, ctime); a changed, fixed or
  broken file is seen on the next round, as when they were read on every round. Its
  ``fingerprint`` says when a released engine's files changed (it is then verified again).

Every blocking read runs in a worker thread (``asyncio.to_thread``), never on the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidecar.canary.golden import KERNEL_TOLERANCE, kernel_expected, load_expected
from sidecar.engine.manifest import EngineManifest, Tolerance, load_manifest

KERNEL_INPUT_ID = "cuda-kernel-v1"  # the kernel canary's input is fixed in its source
DEFAULT_KERNEL_BUDGET_MS = 100.0


@dataclass(frozen=True, slots=True)
class Golden:
    """What one runner's output must be, and how close is close enough."""

    expected: dict[str, np.ndarray]
    tolerance: Tolerance
    budget_ms: float | None
    # the replica-consistency key's parts that come from the canary's own files
    engine_sha256: str = ""
    tensorrt_version: str = ""
    input_sha256: str = ""


KERNEL_GOLDEN_BUDGET = Golden({}, KERNEL_TOLERANCE, DEFAULT_KERNEL_BUDGET_MS)  # tensor-core rounds


def files_digest(paths: Mapping[str, Path]) -> str:
    """sha256 (16 hex digits) over the named files' bytes, in name order (the golden input)."""
    h = hashlib.sha256()
    for name in sorted(paths):
        h.update(name.encode() + b"\0")
        with open(paths[name], "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def read_golden(runner: str, manifest_path: Path, trt_manifest_path: Path) -> Golden:
    """One runner's golden (blocking). Raises ``OSError`` / ``ValueError`` on a bad file."""
    if runner == "cuda-kernel":
        return Golden(
            {"y": kernel_expected()},
            KERNEL_TOLERANCE,
            DEFAULT_KERNEL_BUDGET_MS,
            input_sha256=KERNEL_INPUT_ID,
        )
    path = trt_manifest_path if runner == "tensorrt" else manifest_path
    m = load_manifest(path)
    return Golden(
        load_expected(m),
        m.tolerance,
        m.latency_budget_ms,
        engine_sha256=m.sha256 or "",
        tensorrt_version=m.tensorrt_version or "",
        input_sha256=files_digest(m.golden_input_paths()),
    )


class CanaryGoldens:
    """The canary's goldens by runner: each read once, off the loop, then kept."""

    def __init__(self, manifest_path: Path, trt_manifest_path: Path) -> None:
        self.manifest_path = manifest_path
        self.trt_manifest_path = trt_manifest_path
        self._kept: dict[str, Golden] = {}

    async def get(self, runner: str) -> Golden:
        """The golden of ``runner``. Raises ``OSError`` / ``ValueError`` (nothing kept then)."""
        kept = self._kept.get(runner)
        if kept is None:
            kept = await asyncio.to_thread(read_golden, runner, self.manifest_path, self.trt_manifest_path)
            self._kept[runner] = kept
        return kept


Signature = tuple[tuple[int, int, int, int], ...]


def _stat(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class ProductionGolden:
    """The production engine's manifest and golden outputs (``expected`` is ``None`` and
    ``error`` says why when the outputs could not be read: raised only where they are used)."""

    manifest: EngineManifest
    expected: dict[str, np.ndarray] | None
    error: Exception | None = None

    def outputs(self) -> dict[str, np.ndarray]:
        if self.expected is None:
            assert self.error is not None
            raise self.error
        return self.expected


class ProductionGoldens:
    """The production engine's manifest and goldens, kept while their files are unchanged."""

    def __init__(self, manifest_path: Path) -> None:
        self.manifest_path = manifest_path
        self.reads = 0  # manifest parses (what the tests count)
        self._kept: ProductionGolden | None = None
        self._signature: Signature | None = None

    async def get(self) -> ProductionGolden:
        """Raises what :func:`load_manifest` raises for a bad manifest (nothing kept then)."""
        return await asyncio.to_thread(self.read)

    def read(self) -> ProductionGolden:
        """Blocking: stat the files; parse them again only when one changed."""
        kept, signature = self._kept, self._signature
        if kept is not None and signature is not None and self._unchanged(kept, signature):
            return kept
        self._kept = self._signature = None
        try:
            manifest_stat = _stat(self.manifest_path)
        except OSError:
            manifest_stat = None  # load_manifest below says why, in its own words
        self.reads += 1
        m = load_manifest(self.manifest_path)
        golden_paths = [Path(p) for _, p in sorted(m.golden_output_paths().items())]
        try:
            stats = tuple(_stat(p) for p in golden_paths)
        except OSError:
            stats = None
        try:
            found = ProductionGolden(m, load_expected(m))
        except Exception as exc:  # raised where the outputs are compared, as before
            found = ProductionGolden(m, None, exc)
        self._kept = found
        if manifest_stat is not None and stats is not None and found.error is None:
            self._signature = (manifest_stat, *stats)
        return found

    def fingerprint(self) -> tuple[tuple[int, int, int, int] | None, ...]:
        """Blocking: the stat (size, mtime, inode, ctime) of every file the engine's
        verification rests on: the manifest, then (when it parses) the engine file, its golden
        inputs and outputs (None for one that cannot be stat'ed). Equal: nothing changed."""
        paths = [self.manifest_path]
        try:
            m = self.read().manifest
        except Exception:  # a broken manifest: its own stat says when it changes
            m = None
        if m is not None:
            paths.append(m.path)
            paths.extend(p for _, p in sorted(m.golden_input_paths().items()))
            paths.extend(p for _, p in sorted(m.golden_output_paths().items()))
        out: list[tuple[int, int, int, int] | None] = []
        for path in paths:
            try:
                out.append(_stat(path))
            except OSError:
                out.append(None)
        return tuple(out)

    def _unchanged(self, kept: ProductionGolden, signature: Signature) -> bool:
        paths = [self.manifest_path] + [
            Path(p) for _, p in sorted(kept.manifest.golden_output_paths().items())
        ]
        try:
            return tuple(_stat(p) for p in paths) == signature
        except OSError:
            return False
