"""The determinism self-test at load: the canary run twice on the same input, compared bit for
bit and within the manifest's tolerance, with the hashes of the files a golden belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sidecar.canary.protocol import LoadRequest
from sidecar.canary.worker.runners.base import Runner
from sidecar.engine.manifest import load_manifest


def determinism_self_test(runner: Runner, req: LoadRequest) -> dict[str, Any]:
    """Run the canary twice on the same input; report whether the outputs are bit-identical,
    the largest difference otherwise, and the sha256 of the engine file the golden belongs to
    (TensorRT builds are not bit-identical across builds: a golden is valid for one file)."""
    first = runner.infer()
    second = runner.infer()
    bitwise = set(first) == set(second) and all(
        first[k].shape == second[k].shape and first[k].tobytes() == second[k].tobytes() for k in first
    )
    path = req.tensorrt_manifest if runner.name == "tensorrt" else req.manifest
    try:
        m = load_manifest(Path(path)) if path else None
    except Exception:  # the runner loaded it already; a failure here only loses the hash
        m = None
    atol, rtol = (m.tolerance.atol, m.tolerance.rtol) if m is not None else (0.0, 0.0)
    worst = 0.0
    within = set(first) == set(second)
    for k in set(first) & set(second):
        if first[k].shape != second[k].shape:
            within = False
            continue
        a, b = first[k].astype(np.float64), second[k].astype(np.float64)
        if a.size:
            diff = np.nan_to_num(np.abs(a - b), nan=np.inf)
            worst = max(worst, float(diff.max()))
            within = within and bool((diff <= atol + rtol * np.abs(a)).all())
    out: dict[str, Any] = {
        "runner": runner.name,
        "bitwise": bitwise,
        "max_abs_diff": worst,
        "within_tolerance": within,
    }
    if m is not None:
        out["manifest_sha256"] = m.sha256
        out["engine_sha256"] = _sha256(m.path)
    return out


def _sha256(path: Path) -> str | None:
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()
