"""Golden references and the output comparison. Pure numpy: used by the serving process.

The kernel canary's known answer lives here (not in the runner) so the supervisor can check
the worker's output against a reference computed independently of the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidecar.engine.manifest import EngineManifest, Tolerance

KERNEL_N = 4096
KERNEL_TOLERANCE = Tolerance(atol=0.0, rtol=0.0)  # integers below 2**24: exact in float32


def kernel_input() -> np.ndarray:
    """The NVRTC canary's fixed input: small integers, exact in float32."""
    return (np.arange(KERNEL_N, dtype=np.int64) % 1024).astype(np.float32)


def kernel_expected() -> np.ndarray:
    """What ``y[i] = x[i] * x[i] + i`` must give (every value < 2**24, so exact)."""
    x = kernel_input().astype(np.float64)
    return (x * x + np.arange(KERNEL_N, dtype=np.float64)).astype(np.float32)


def load_expected(manifest: EngineManifest) -> dict[str, np.ndarray]:
    """Golden outputs of a manifest. Raises ``OSError`` / ``ValueError`` on a bad file."""
    out: dict[str, np.ndarray] = {}
    for name, path in manifest.golden_output_paths().items():
        out[name] = np.asarray(np.load(Path(path), allow_pickle=False))
    if not out:
        raise ValueError(f"manifest {manifest.name} names no golden outputs")
    return out


@dataclass(frozen=True, slots=True)
class Comparison:
    """Outcome of comparing one canary's outputs with the golden ones."""

    matches: bool
    max_abs_error: float
    detail: str  # empty when it matches; otherwise what went wrong, first problem first


def compare_outputs(
    outputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    tolerance: Tolerance,
) -> Comparison:
    """Elementwise ``|y - ref| <= atol + rtol * |ref|`` (numpy ``isclose``), every output.

    An output named ``tensor@gpu`` is compared with golden ``tensor`` (one per device).
    NaN or Inf in an output is always a mismatch; a missing output or shape change too.
    """
    problems: list[str] = []
    worst = 0.0
    if not outputs:
        return Comparison(False, float("inf"), "the worker returned no outputs")
    seen: set[str] = set()
    for name, got in sorted(outputs.items()):
        base = name.split("@", 1)[0]
        ref = expected.get(base)
        if ref is None:
            problems.append(f"{name}: no golden output")
            continue
        seen.add(base)
        if got.shape != ref.shape:
            problems.append(f"{name}: shape {got.shape}, golden {ref.shape}")
            worst = float("inf")
            continue
        g = got.astype(np.float64)
        r = ref.astype(np.float64)
        finite = np.isfinite(g)
        if not finite.all():
            bad = int((~finite).sum())
            problems.append(f"{name}: {bad} non-finite values (NaN/Inf)")
            worst = float("inf")
            continue
        err = np.abs(g - r)
        worst = max(worst, float(err.max(initial=0.0)))
        close = err <= tolerance.atol + tolerance.rtol * np.abs(r)
        if not close.all():
            problems.append(
                f"{name}: {int((~close).sum())}/{close.size} values off, "
                f"max abs error {float(err.max()):.6g} (atol {tolerance.atol}, "
                f"rtol {tolerance.rtol})"
            )
    missing = sorted(set(expected) - seen)
    if missing:
        problems.append(f"missing outputs: {', '.join(missing)}")
        worst = float("inf")
    return Comparison(not problems, worst, "; ".join(problems))
