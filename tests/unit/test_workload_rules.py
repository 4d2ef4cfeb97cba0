"""Workload probe config parsing, answer comparison and the workload-liveness rule (pure)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from sidecar.config import Section
from sidecar.core.values import CheckStatus, Severity
from sidecar.workload.component import WorkloadComponent
from sidecar.workload.config import Tensor, WorkloadConfig, parse_workload_config
from sidecar.workload.probes import ProbeOutcome, compare_outputs

CANARY_MANIFEST = Path(__file__).resolve().parents[2] / "engines" / "canary" / "manifest.yaml"


class FakeGpu:
    def __init__(self) -> None:
        self.fault = False

    def exclusive_process(self) -> bool:
        return False

    def busy(self) -> bool:
        return False

    def reset_generation(self) -> int:
        return 0

    def gpu_fault(self) -> bool:
        return self.fault


def parse(raw: dict[str, object]) -> tuple[WorkloadConfig, list[str]]:
    errors: list[str] = []
    return parse_workload_config(Section(raw, "workload", errors)), errors


def test_defaults() -> None:
    """An empty section is disabled with the documented defaults."""
    cfg, errors = parse({})
    assert errors == []
    assert (cfg.enabled, cfg.interval_s, cfg.timeout_s, cfg.failure_threshold) == (
        False,
        5.0,
        2.0,
        3,
    )
    assert cfg.gate_readiness is True


def test_errors_name_fields() -> None:
    """Missing url/model for an enabled probe, bad kind and unknown keys are all named."""
    _, errors = parse({"enabled": True, "kind": "kserve-http", "colour": 1, "timeout": "x"})
    text = "\n".join(errors)
    assert "workload.url: required" in text
    assert "workload.model: required" in text
    assert "workload.colour: unknown field" in text
    assert "workload.timeout" in text
    _, errors = parse({"kind": "soap"})
    assert any(e.startswith("workload.kind: must be one of") for e in errors)
    _, errors = parse({"request": {"inputs": [{"name": "x", "data": [1], "file": "a.npy"}]}})
    assert any("workload.request.inputs[0].data: give exactly one" in e for e in errors)


def test_manifest_supplies_request_and_answer() -> None:
    """workload.manifest takes golden inputs, outputs and tolerances from an engine manifest."""
    cfg, errors = parse(
        {
            "enabled": True,
            "kind": "kserve-http",
            "url": "http://x",
            "model": "canary",
            "manifest": str(CANARY_MANIFEST),
        }
    )
    assert errors == []
    assert [t.name for t in cfg.inputs] == ["x"] and cfg.inputs[0].array.shape == (1, 16)
    assert [t.name for t in cfg.outputs] == ["y"] and cfg.atol == 1e-5


def test_inline_tensors() -> None:
    """Inline request data is shaped and typed by datatype/shape."""
    cfg, errors = parse(
        {
            "request": {
                "inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 2], "data": [1, 2, 3, 4]}]
            },
            "expect": {"outputs": [{"name": "y", "data": [1.5]}], "atol": 0.1},
        }
    )
    assert errors == []
    assert cfg.inputs[0].array.dtype == np.int64 and cfg.inputs[0].array.shape == (2, 2)
    assert cfg.inputs[0].datatype == "INT64" and cfg.atol == 0.1


def test_compare_outputs() -> None:
    """Within tolerance passes; off by more, NaN, missing or wrong size each say why."""
    want = (Tensor("y", np.array([[1.0, 2.0]], dtype=np.float32)),)
    assert compare_outputs(want, {"y": np.array([1.00001, 2.0])}, 1e-4, 0) is None
    assert "values off" in (compare_outputs(want, {"y": np.array([1.1, 2.0])}, 1e-4, 0) or "")
    assert "NaN" in (compare_outputs(want, {"y": np.array([np.nan, 2.0])}, 1e-4, 0) or "")
    assert "missing" in (compare_outputs(want, {"z": np.array([1.0, 2.0])}, 1e-4, 0) or "")
    assert "values, expected" in (compare_outputs(want, {"y": np.array([1.0])}, 1e-4, 0) or "")


def _component(gpu: FakeGpu | None = None, **kw: object) -> WorkloadComponent:
    cfg = WorkloadConfig(enabled=True, kind="http-ready", url="http://127.0.0.1:1", **kw)  # type: ignore[arg-type]
    return WorkloadComponent(cfg, registry=CollectorRegistry(), gpu_state=gpu)


BAD = ProbeOutcome("WorkloadUnreachable", "connection refused", 0.001)
GOOD = ProbeOutcome("", "ok", 0.001)


def test_liveness_fails_only_after_threshold() -> None:
    """workload fails at once; workload/liveness only at the 3rd consecutive failure (FATAL)."""
    comp = _component()
    for i in range(1, 4):
        ready, live = comp.results(BAD)
        assert ready.status is CheckStatus.FAIL and ready.gates == frozenset({"readiness"})
        assert live.gates == frozenset({"workload-liveness"})
        assert live.ok is (i < 3)
    assert live.severity is Severity.FATAL and live.reason == "WorkloadUnreachable"
    _, live = comp.results(GOOD)
    assert live.ok and comp.consecutive_failures == 0


def test_success_resets_count() -> None:
    """A success between failures restarts the count: 2 bad, 1 good, 2 bad never fails."""
    comp = _component()
    for outcome in (BAD, BAD, GOOD, BAD, BAD):
        _, live = comp.results(outcome)
        assert live.ok


def test_gpu_fault_never_restart_worthy() -> None:
    """While the GPU is at fault, workload/liveness stays OK (GpuFaultNotRestartable)."""
    gpu = FakeGpu()
    comp = _component(gpu)
    gpu.fault = True
    for _ in range(10):
        ready, live = comp.results(BAD)
        assert ready.status is CheckStatus.FAIL
        assert live.ok and live.reason == "GpuFaultNotRestartable"
    gpu.fault = False
    _, live = comp.results(BAD)
    assert live.ok  # the count restarted after the GPU fault
    comp.results(BAD)
    _, live = comp.results(BAD)
    assert not live.ok


def test_not_gating_readiness_option() -> None:
    """gate_readiness false: the workload condition gates nothing and is a warning."""
    comp = _component(gate_readiness=False)
    ready, _ = comp.results(BAD)
    assert ready.gates == frozenset() and ready.severity is Severity.WARNING


def test_disabled_has_no_checks() -> None:
    """A disabled workload probe contributes no checks."""
    comp = WorkloadComponent(WorkloadConfig(), registry=CollectorRegistry())
    assert comp.checks() == []
