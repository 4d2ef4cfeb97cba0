"""The tensor-core SDC canary through the real worker process (numpy model of the kernel as
the device, simulation mode): pass with coverage, an injected flip becomes a FATAL, latched,
persisted SilentDataCorruption naming GPU/SM/bits, cleared only by a reset plus passing rounds;
the determinism self-test of the ONNX Runtime canary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidecar.canary import sdc
from sidecar.canary.component import CanaryComponent
from sidecar.canary.config import CanaryConfig, TensorCoreConfig
from sidecar.canary.sdc_screen import STATE_FILE
from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.runtime.scenario import ScenarioFile
from sidecar.testing.canary import (
    ENGINES,
    FAST,
    GpuState,
    Sink,
    main,
    make,
    reason,
    set_scenario,
    until,
)

UUID = "GPU-00000000-0000-0000-0000-000000000000"


def make_tc(
    tmp_path: Path,
    *,
    simulate: bool = True,
    scenario: dict[str, Any] | None = None,
    gpu: GpuState | None = None,
    inject: bool = False,
    **cfg: Any,
) -> tuple[CanaryComponent, ScenarioFile | None, CollectorRegistry]:
    tc = TensorCoreConfig(blocks_per_sm=2, allow_fault_injection=inject, simulated_sms=16)
    return make(
        tmp_path,
        simulate=simulate,
        scenario=scenario,
        gpu=gpu,
        state_dir=tmp_path / "state",
        **{"runner": "tensor-core", "tensor_core": tc, **cfg},
    )


def named(results: list[CheckResult], name: str) -> CheckResult:
    return next(r for r in results if r.name == name)


async def test_tensor_core_canary_passes_with_full_coverage_and_metrics(tmp_path: Path) -> None:
    comp, _, reg = make_tc(tmp_path)
    await comp.start(Sink())
    try:
        res = await until(comp, reason("CanaryPassed"))
        ok = main(res)
        assert ok.labels["runner"] == "tensor-core" and f"{UUID} 16/16 SMs" in ok.message
        cov = named(res, "canary/sdc-coverage")
        assert cov.status is CheckStatus.OK and "16/16 SMs" in cov.message
        assert reg.get_sample_value("trt_health_sdc_sms_covered", {"gpu": UUID}) == 16
        assert reg.get_sample_value("trt_health_sdc_sms", {"gpu": UUID}) == 16
        assert reg.get_sample_value("trt_health_sdc_rounds_total", {"gpu": UUID, "outcome": "pass"}) == 1
        assert (reg.get_sample_value("trt_health_sdc_round_microseconds", {"gpu": UUID}) or 0) > 0
        assert (reg.get_sample_value("trt_health_sdc_sm_seconds_screened_per_hour", {"gpu": UUID}) or 0) > 0
        # a second round: fresh inputs, judged again
        assert main(await comp.run_canary()).reason == "CanaryPassed"
        assert reg.get_sample_value("trt_health_sdc_rounds_total", {"gpu": UUID, "outcome": "pass"}) == 2
    finally:
        await comp.stop()


async def test_injected_flip_is_fatal_latched_persisted_and_cleared_only_by_reset_and_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sdc.INJECTION_ENV, "1")  # inherited by the worker process
    gpu = GpuState()
    comp, sf, reg = make_tc(
        tmp_path,
        scenario={"canary": {"gpu_fault": "sdc_flip:5:7:bf16"}},
        gpu=gpu,
        inject=True,
        recovery_passes=2,
    )
    assert sf is not None
    await comp.start(Sink())
    try:
        bad = main(await until(comp, reason("SilentDataCorruption")))
        assert bad.severity is Severity.FATAL and bad.status is CheckStatus.FAIL
        assert UUID in bad.message and "SM(s) 5" in bad.message and "xor 0x00000080" in bad.message
        assert "bf16 C[0,0]" in bad.message
        state = tmp_path / "state" / STATE_FILE
        assert state.exists() and "SilentDataCorruption" in state.read_text()
        set_scenario(sf, {"canary": {"gpu_fault": "none"}})
        for _ in range(3):  # the evidence is gone but nothing reset the GPU: still latched
            assert main(await comp.run_canary()).reason == "SilentDataCorruption"
        assert reg.get_sample_value("trt_health_sdc_rounds_total", {"gpu": UUID, "outcome": "mismatch"}) == 1
    finally:
        await comp.stop()

    # A restarted sidecar remembers it before any round runs.
    comp2, _, reg2 = make_tc(tmp_path, gpu=gpu, recovery_passes=2)
    first = main(await comp2.run_canary())
    assert first.reason == "SilentDataCorruption" and "SM(s) 5" in first.message
    assert "persisted" in first.message
    await comp2.start(Sink())
    try:
        await until(comp2, lambda r: comp2.supervisor.ready and r.reason == "SilentDataCorruption")
        gpu.generation += 1  # a GPU reset is observed
        rec = main(await comp2.run_canary())
        assert rec.reason == "SilentDataCorruption" and "recovering: 1/2" in rec.message
        assert main(await comp2.run_canary()).reason == "CanaryPassed"
        assert "SilentDataCorruption" not in (tmp_path / "state" / STATE_FILE).read_text()
        assert reg2.get_sample_value("trt_health_sdc_rounds_total", {"gpu": UUID, "outcome": "pass"}) == 2
    finally:
        await comp2.stop()


async def test_injection_is_refused_without_the_config_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Config switch off: the injection request fails closed (FaultInjectionRefused), never a
    silent pass and never SDC."""
    monkeypatch.setenv(sdc.INJECTION_ENV, "1")
    comp, _, _ = make_tc(tmp_path, scenario={"canary": {"gpu_fault": "sdc_flip:1:1"}}, inject=False)
    await comp.start(Sink())
    try:
        refused = main(await until(comp, reason("FaultInjectionRefused")))
        assert refused.severity is Severity.CRITICAL
    finally:
        await comp.stop()


async def test_numpy_device_is_refused_outside_simulation(tmp_path: Path) -> None:
    comp, _, _ = make_tc(tmp_path, simulate=False)
    await comp.start(Sink())
    try:
        res = main(await until(comp, reason("CanaryConfigInvalid")))
        assert "outside simulation" in res.message
    finally:
        await comp.stop()


async def test_onnxruntime_determinism_self_test_reports_bit_identical(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    comp = CanaryComponent(
        CanaryConfig(**FAST), simulate=False, scenario=None, registry=reg, gpu_state=None, engines_dir=ENGINES
    )
    await comp.start(Sink())
    try:
        res = await until(comp, reason("CanaryPassed"))
        det = named(res, "canary/determinism")
        assert det.status is CheckStatus.OK and "bit-identical" in det.message
    finally:
        await comp.stop()


async def test_golden_recorded_for_another_engine_file_fails_closed(tmp_path: Path) -> None:
    """The canary manifest's sha256 is not the engine file's: GoldenEngineMismatch (CRITICAL)."""
    import shutil

    eng = tmp_path / "canary"
    shutil.copytree(ENGINES / "canary", eng)
    doc = yaml.safe_load((eng / "manifest.yaml").read_text())
    doc["sha256"] = "0" * 64
    (eng / "manifest.yaml").write_text(yaml.safe_dump(doc))
    comp = CanaryComponent(
        CanaryConfig(**{**FAST, "manifest": eng / "manifest.yaml"}),
        simulate=False,
        scenario=None,
        registry=CollectorRegistry(),
        gpu_state=None,
        engines_dir=ENGINES,
    )
    await comp.start(Sink())
    try:
        res = await until(comp, reason("CanaryPassed"))
        det = named(res, "canary/determinism")
        assert det.status is CheckStatus.FAIL and det.reason == "GoldenEngineMismatch"
        assert det.severity is Severity.CRITICAL and "readiness" in det.gates
    finally:
        await comp.stop()


async def test_a_failed_round_while_recovering_stays_fatal_and_restarts_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recovery needs consecutive passing rounds: a worker crash in between is no pass, and the
    condition stays FATAL SilentDataCorruption (it does not blink to a CRITICAL crash)."""
    monkeypatch.setenv(sdc.INJECTION_ENV, "1")
    gpu = GpuState()
    comp, sf, _ = make_tc(
        tmp_path, scenario={"canary": {"gpu_fault": "sdc_flip:1:1"}}, gpu=gpu, inject=True, recovery_passes=2
    )
    assert sf is not None
    await comp.start(Sink())
    try:
        await until(comp, reason("SilentDataCorruption"))
        set_scenario(sf, {"canary": {"gpu_fault": "none"}})
        gpu.generation += 1
        assert "recovering: 1/2" in main(await comp.run_canary()).message
        set_scenario(sf, {"canary": {"mode": "crash"}})
        crashed = main(await comp.run_canary())
        assert crashed.reason == "SilentDataCorruption" and crashed.severity is Severity.FATAL
        assert "WorkerCrashed" in crashed.message
        set_scenario(sf, {"canary": {"mode": "ok"}})
        rec = main(await until(comp, lambda r: "recovering: 1/2" in r.message))
        assert rec.reason == "SilentDataCorruption"
        assert main(await comp.run_canary()).reason == "CanaryPassed"
    finally:
        await comp.stop()


async def test_a_persisted_sdc_finding_is_not_cleared_by_another_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passing ONNX Runtime (CPU) rounds after a reset are no evidence about the tensor cores."""
    monkeypatch.setenv(sdc.INJECTION_ENV, "1")
    gpu = GpuState()
    comp, _, _ = make_tc(tmp_path, scenario={"canary": {"gpu_fault": "sdc_flip:2:2"}}, gpu=gpu, inject=True)
    await comp.start(Sink())
    try:
        await until(comp, reason("SilentDataCorruption"))
    finally:
        await comp.stop()
    ort = CanaryComponent(
        CanaryConfig(**{**FAST, "recovery_passes": 1}),
        simulate=False,
        scenario=None,
        registry=CollectorRegistry(),
        gpu_state=gpu,
        engines_dir=ENGINES,
        state_dir=tmp_path / "state",
    )
    await ort.start(Sink())
    try:
        assert main(await ort.run_canary()).reason == "SilentDataCorruption"
        gpu.generation += 1
        held = main(await until(ort, lambda r: "only runner tensor-core" in r.message))
        assert held.reason == "SilentDataCorruption" and held.severity is Severity.FATAL
        assert main(await ort.run_canary()).reason == "SilentDataCorruption"
        assert "SilentDataCorruption" in (tmp_path / "state" / STATE_FILE).read_text()
    finally:
        await ort.stop()


async def test_a_reboot_since_the_finding_counts_as_a_reset_but_rounds_must_still_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from sidecar.gpu.latches import read_boot_id

    if not read_boot_id():
        pytest.skip("no kernel boot id on this machine")
    monkeypatch.setenv(sdc.INJECTION_ENV, "1")
    comp, _, _ = make_tc(
        tmp_path, scenario={"canary": {"gpu_fault": "sdc_flip:4:4"}}, gpu=GpuState(), inject=True
    )
    await comp.start(Sink())
    try:
        await until(comp, reason("SilentDataCorruption"))
    finally:
        await comp.stop()
    state = tmp_path / "state" / STATE_FILE
    doc = json.loads(state.read_text())
    doc["boot_id"] = "an-earlier-boot"
    state.write_text(json.dumps(doc))
    again, _, _ = make_tc(tmp_path, gpu=GpuState(), recovery_passes=2)  # same generation 0
    await again.start(Sink())
    try:
        first = main(await until(again, lambda r: "recovering: 1/2" in r.message))
        assert first.reason == "SilentDataCorruption" and first.severity is Severity.FATAL
        assert main(await again.run_canary()).reason == "CanaryPassed"
    finally:
        await again.stop()


async def test_an_unreadable_sdc_state_file_gates_readiness(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / STATE_FILE).write_text("{not json")
    comp, _, _ = make_tc(tmp_path)
    await comp.start(Sink())
    try:
        res = await until(comp, reason("CanaryPassed"))
        st = named(res, "canary/sdc-state")
        assert st.reason == "StateFileProblem" and STATE_FILE in st.message
        assert st.severity is Severity.CRITICAL and "readiness" in st.gates  # fail closed
    finally:
        await comp.stop()


async def test_an_invalid_round_while_recovering_stays_fatal_and_restarts_the_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round the screen cannot judge (no tensor-core outputs) while an SDC finding recovers is
    no pass: the condition stays FATAL SilentDataCorruption and the passes start over."""
    from sidecar.canary.outcome import RunOutcome

    monkeypatch.setenv(sdc.INJECTION_ENV, "1")
    gpu = GpuState()
    comp, sf, _ = make_tc(
        tmp_path, scenario={"canary": {"gpu_fault": "sdc_flip:1:1"}}, gpu=gpu, inject=True, recovery_passes=2
    )
    assert sf is not None
    await comp.start(Sink())
    try:
        await until(comp, reason("SilentDataCorruption"))
        set_scenario(sf, {"canary": {"gpu_fault": "none"}})
        gpu.generation += 1
        assert "recovering: 1/2" in main(await comp.run_canary()).message
        # an unjudgeable round, as a broken worker would report it (the screen's own input)
        invalid = main(await comp.judge_sdc(RunOutcome(ok=True, runner="tensor-core"), gpu.generation))
        assert invalid.reason == "SilentDataCorruption" and invalid.severity is Severity.FATAL
        assert "recovering: 1/2" in main(await comp.run_canary()).message  # counted from zero again
        assert main(await comp.run_canary()).reason == "CanaryPassed"
    finally:
        await comp.stop()
