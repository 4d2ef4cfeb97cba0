"""Generate the ONNX canary model, its golden files and its manifest.

    .venv/bin/python engines/canary/make_canary.py      # rewrites the files next to this script

The model is ``y = relu(x @ W + b)`` with x [1, 16] and y [1, 8] float32, weights fixed
(multiples of 1/64 from a seeded generator, so every run writes the same bytes). The golden
output is computed with numpy in float64 and rounded to float32: a reference independent of
any inference engine. Tolerances cover float32 summation-order differences between runners.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from sidecar.engine.manifest import (  # noqa: E402
    EngineManifest,
    TensorSpec,
    Tolerance,
    dump_manifest,
)

SEED = 20240607
IN, OUT = 16, 8


def weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    w = (rng.integers(-64, 65, size=(IN, OUT)) / 64.0).astype(np.float32)
    b = (rng.integers(-32, 33, size=(OUT,)) / 64.0).astype(np.float32)
    x = (rng.integers(-64, 65, size=(1, IN)) / 32.0).astype(np.float32)
    return w, b, x


def build_model(w: np.ndarray, b: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "trt_health_canary",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    # Opset 17 / IR 8: loadable by every ONNX Runtime and TensorRT parser in use.
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="trt-health-sidecar"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main(out_dir: Path = HERE) -> None:
    w, b, x = weights()
    model_path = out_dir / "canary.onnx"
    model_path.write_bytes(build_model(w, b).SerializeToString())
    y = np.maximum(x.astype(np.float64) @ w.astype(np.float64) + b, 0.0).astype(np.float32)
    np.save(out_dir / "golden_input.npy", x)
    np.save(out_dir / "golden_output.npy", y)
    data = model_path.read_bytes()
    manifest = EngineManifest(
        name="canary",
        file="canary.onnx",
        directory=out_dir,
        format="onnx",
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        inputs=(TensorSpec("x", "float32", (1, IN)),),
        outputs=(TensorSpec("y", "float32", (1, OUT)),),
        golden_inputs={"x": "golden_input.npy"},
        golden_outputs={"y": "golden_output.npy"},
        tolerance=Tolerance(atol=1e-5, rtol=1e-4),
        latency_budget_ms=50.0,
    )
    dump_manifest(manifest, out_dir / "manifest.yaml")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
