"""Pure parts of the canary: config, comparison, protocol, backoff, latch, scenario faults."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sidecar.canary.component import fault_from_scenario
from sidecar.canary.config import CanaryConfig, parse_canary_config
from sidecar.canary.golden import compare_outputs, kernel_expected, kernel_input
from sidecar.canary.latch import MismatchLatch
from sidecar.canary.protocol import (
    LoadRequest,
    ProductionSpec,
    decode_array,
    decode_arrays,
    encode_arrays,
)
from sidecar.canary.supervisor import backoff_delay, describe_exit
from sidecar.config import Section
from sidecar.engine.manifest import Tolerance, load_manifest

ROOT = Path(__file__).resolve().parents[2]


def parse(raw: object) -> tuple[CanaryConfig, list[str]]:
    errors: list[str] = []
    cfg = parse_canary_config(Section(raw, "canary", errors))
    return cfg, errors


def test_config_defaults() -> None:
    """An empty section gives the documented defaults and no errors."""
    cfg, errors = parse({})
    assert errors == []
    assert cfg.runner == "auto" and cfg.interval_s == 5.0 and cfg.recovery_passes == 3
    assert cfg.allow_engine_host_code is False and cfg.latency_gates_readiness is False


def test_config_interval_below_floor_is_rejected_naming_the_field() -> None:
    """interval: 100ms is refused (GPU cost) unless allow_fast_interval is set."""
    _, errors = parse({"interval": "100ms"})
    assert len(errors) == 1 and errors[0].startswith("canary.interval:")
    assert "allow_fast_interval" in errors[0]
    cfg, errors = parse({"interval": "100ms", "allow_fast_interval": True})
    assert errors == [] and cfg.interval_s == pytest.approx(0.1)
    _, errors = parse({"interval": "1ms", "allow_fast_interval": True})
    assert errors and "canary.interval" in errors[0]


def test_config_every_problem_reported_at_once() -> None:
    """Bad runner, unknown key and a production engine without budget are all named."""
    _, errors = parse({"runner": "cuda", "typo": 1, "production_engine": {"manifest": "m.yaml"}})
    text = "\n".join(errors)
    assert "canary.runner:" in text and "canary.typo: unknown field" in text
    assert "canary.production_engine.memory_budget_mib" in text


def test_config_production_engine_parsed() -> None:
    """production_engine keys land in the typed config."""
    cfg, errors = parse(
        {
            "production_engine": {
                "manifest": "/e/m.yaml",
                "memory_budget_mib": 512,
                "release_after_verify": True,
            }
        }
    )
    assert errors == []
    assert cfg.production_engine is not None
    assert cfg.production_engine.memory_budget_mib == 512
    assert cfg.production_engine.release_after_verify is True
    assert cfg.engines == (cfg.production_engine,)  # the one-entry form


def test_config_production_engines_list() -> None:
    """production_engines: each entry as production_engine, in order; the primary kept, the
    fallback released after verify; none configured is no engine."""
    cfg, errors = parse(
        {
            "production_engines": [
                {"manifest": "/e/prim.yaml", "memory_budget_mib": 2048},
                {"manifest": "/e/fb.yaml", "memory_budget_mib": 512, "release_after_verify": True},
            ]
        }
    )
    assert errors == []
    assert [(str(e.manifest), e.memory_budget_mib, e.release_after_verify) for e in cfg.engines] == [
        ("/e/prim.yaml", 2048, False),
        ("/e/fb.yaml", 512, True),
    ]
    assert parse({})[0].engines == () and parse({"production_engines": []})[0].engines == ()


@pytest.mark.parametrize(
    ("raw", "problems"),
    [
        (
            {"production_engines": [{"manifest": "m.yaml"}, {"memory_budget_mib": 1, "x": 1}]},
            [
                "canary.production_engines[0].memory_budget_mib: required: the GPU memory the "
                "production engine may take",
                "canary.production_engines[1].manifest: required",
                "canary.production_engines[1].x: unknown field",
            ],
        ),
        (
            {"production_engines": [{"manifest": "m.yaml", "memory_budget_mib": 1}] * 2},
            ["canary.production_engines[1].manifest: m.yaml is already entry [0]"],
        ),
        (
            {
                "production_engine": {"manifest": "a.yaml", "memory_budget_mib": 1},
                "production_engines": [{"manifest": "b.yaml", "memory_budget_mib": 1}],
            },
            [
                "canary.production_engines: give production_engine (one engine) or "
                "production_engines (a list), not both"
            ],
        ),
        (
            {"production_engines": {"manifest": "m.yaml"}},
            ["canary.production_engines: must be a list, got dict"],
        ),
    ],
)
def test_config_production_engines_refused(raw: dict[str, object], problems: list[str]) -> None:
    assert parse(raw)[1] == problems


def test_compare_match_and_max_abs_error() -> None:
    """Outputs within atol/rtol match and report their max abs error."""
    ref = {"y": np.array([1.0, 2.0], np.float32)}
    cmp = compare_outputs({"y": np.array([1.0, 2.00001], np.float32)}, ref, Tolerance(1e-4, 0))
    assert cmp.matches and 0 < cmp.max_abs_error < 1e-4


def test_compare_mismatch_names_error() -> None:
    """A value off by more than the tolerance is a mismatch with its max abs error."""
    ref = {"y": np.array([1.0, 2.0], np.float32)}
    cmp = compare_outputs({"y": np.array([1.0, 2.5], np.float32)}, ref, Tolerance(1e-4, 1e-3))
    assert not cmp.matches and cmp.max_abs_error == pytest.approx(0.5)
    assert "max abs error 0.5" in cmp.detail


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_compare_non_finite_is_mismatch(bad: float) -> None:
    """NaN and Inf are mismatches even with huge tolerances."""
    ref = {"y": np.array([1.0, 2.0], np.float32)}
    cmp = compare_outputs({"y": np.array([1.0, bad], np.float32)}, ref, Tolerance(1e9, 1e9))
    assert not cmp.matches and "non-finite" in cmp.detail


def test_compare_shape_and_missing_outputs() -> None:
    """A changed shape or an absent output is a mismatch."""
    ref = {"y": np.zeros((1, 8), np.float32), "z": np.zeros(2, np.float32)}
    cmp = compare_outputs({"y": np.zeros((8,), np.float32)}, ref, Tolerance())
    assert not cmp.matches and "shape" in cmp.detail and "missing outputs: z" in cmp.detail


def test_compare_per_device_outputs() -> None:
    """Outputs named tensor@gpu are each checked against golden tensor."""
    exp = kernel_expected()
    good = {"y@0": exp.copy(), "y@1": exp.copy()}
    assert compare_outputs(good, {"y": exp}, Tolerance(0, 0)).matches
    bad = {"y@0": exp.copy(), "y@1": exp.copy()}
    bad["y@1"][7] += 1
    cmp = compare_outputs(bad, {"y": exp}, Tolerance(0, 0))
    assert not cmp.matches and cmp.detail.startswith("y@1")


def test_kernel_reference_is_exact() -> None:
    """The kernel's known answer x*x+i is exact in float32 (all values < 2**24)."""
    x = kernel_input().astype(np.float64)
    y = kernel_expected()
    assert y.dtype == np.float32 and float(y.max()) < 2**24
    assert np.array_equal(y.astype(np.float64), x * x + np.arange(x.size))


def test_protocol_array_round_trip_and_malformed() -> None:
    """Arrays survive the JSON encoding; truncated data is refused."""
    arrays = {"y": np.arange(6, dtype=np.float16).reshape(2, 3), "i": np.array([1, 2], np.int64)}
    back = decode_arrays(encode_arrays(arrays))
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v)
    enc = encode_arrays({"y": np.zeros(4, np.float32)})["y"]
    enc["shape"] = [5]
    with pytest.raises(ValueError, match="bytes"):
        decode_array(enc)


def test_load_request_round_trip() -> None:
    """A load request with a production engine survives to_dict/from_dict."""
    req = LoadRequest(
        "tensorrt", "/a.yaml", "/b.yaml", ProductionSpec("/p.yaml", 256.0, True), True, (0, 1), 3
    )
    assert LoadRequest.from_dict(req.to_dict()) == req


def test_load_request_with_several_production_engines() -> None:
    """productions round-trip; engines() lists the one-engine form's first, each once; the
    one-engine form (``production`` only, as an older request) is still read."""
    a, b = ProductionSpec("/a.yaml", 256.0), ProductionSpec("/b.yaml", 64.0, True)
    req = LoadRequest("onnxruntime", "/c.yaml", None, productions=(a, b))
    back = LoadRequest.from_dict(req.to_dict())
    assert back == req and back.engines() == (a, b)
    legacy = {
        "op": "load",
        "runner": "onnxruntime",
        "production": {"manifest": "/a.yaml", "memory_budget_mib": 256},
    }
    assert LoadRequest.from_dict(legacy).engines() == (a,)
    assert LoadRequest("onnxruntime", None, None, a, productions=(a, b)).engines() == (a, b)


def test_backoff_doubles_and_caps() -> None:
    """Restart delay: 0, then initial, doubling, capped at the maximum."""
    assert [backoff_delay(n, 1.0, 10.0) for n in range(6)] == [0, 1, 2, 4, 8, 10]


def test_describe_exit_names_signal_and_code() -> None:
    """Negative return codes become signal names; positive ones exit codes."""
    assert describe_exit(-11) == ("SIGSEGV", "worker killed by SIGSEGV")
    assert describe_exit(-9)[0] == "SIGKILL"
    assert describe_exit(3) == ("exit_3", "worker exited with code 3")


def test_mismatch_latch_sticky_until_reset_then_recovery_passes() -> None:
    """A mismatch holds through passes until the reset generation changes, then N passes."""
    latch = MismatchLatch(recovery_passes=3)
    latch.mismatch(generation=0, message="bad")
    for _ in range(5):
        latch.observe_generation(0)
        latch.passed()
    assert latch.holds and latch.latched
    latch.observe_generation(1)
    assert latch.holds and latch.recovering and not latch.latched
    latch.passed()
    latch.passed()
    assert latch.holds
    latch.passed()
    assert not latch.holds


def test_mismatch_during_recovery_latches_again() -> None:
    """A new mismatch while recovering restarts the latch at the current generation."""
    latch = MismatchLatch(recovery_passes=2)
    latch.mismatch(0, "bad")
    latch.observe_generation(1)
    latch.passed()
    latch.mismatch(1, "bad again")
    latch.observe_generation(1)
    latch.passed()
    latch.passed()
    assert latch.latched


def test_fault_from_scenario_modes() -> None:
    """The scenario canary: key maps to a fault; unknown modes fall back to ok."""
    assert fault_from_scenario({}).mode == "ok"
    f = fault_from_scenario({"canary": {"mode": "slow", "delay_ms": 250}})
    assert f.mode == "slow" and f.delay_ms == 250
    assert fault_from_scenario({"canary": {"mode": "explode"}}).mode == "ok"
    assert fault_from_scenario({"canary": "crash"}).mode == "ok"
    assert fault_from_scenario({"canary": {"gpu_fault": "spin"}}).gpu_fault == "spin"


def test_committed_canary_model_matches_manifest_and_golden() -> None:
    """engines/canary: manifest sha256/size match the model; golden = numpy relu(xW+b)."""
    m = load_manifest(ROOT / "engines" / "canary" / "manifest.yaml")
    data = m.path.read_bytes()
    assert m.format == "onnx" and m.size == len(data)
    assert m.sha256 == hashlib.sha256(data).hexdigest()
    sys.path.insert(0, str(ROOT / "engines" / "canary"))
    try:
        import make_canary
    finally:
        sys.path.pop(0)
    w, b, x = make_canary.weights()
    assert np.array_equal(np.load(m.golden_input_paths()["x"]), x)
    y = np.maximum(x.astype(np.float64) @ w + b, 0).astype(np.float32)
    assert np.array_equal(np.load(m.golden_output_paths()["y"]), y)
    assert (y != 0).sum() >= 3  # enough live outputs for a perturbation to show
    assert yaml.safe_load((ROOT / "engines/canary/manifest.yaml").read_text())["name"] == "canary"


def test_serving_side_imports_no_gpu_library() -> None:
    """Importing the canary component loads no CUDA, TensorRT or ONNX Runtime module."""
    code = (
        "import sys, sidecar.canary.component, sidecar.canary.supervisor\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('cuda', 'tensorrt', 'tensorrt_lean', 'tensorrt_lean_bindings', 'onnxruntime', 'pynvml'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
