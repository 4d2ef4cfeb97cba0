"""GpuComponent with the simulated backend driven by a real scenario file (no GPU needed).

Each test writes the scenario file as a user would, and asserts what a user sees: the
condition names, statuses, severities, reasons, gates and the Prometheus metrics.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.core.values import CheckStatus, Severity
from sidecar.testing import await_until
from sidecar.testing.gpu import U0, U1, Harness, fast_config, gating, gpu


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, fast_config())
    harness.write({})
    yield harness
    await harness.stop()


async def test_empty_scenario_is_one_healthy_gpu(h: Harness) -> None:
    """No gpus: key -> one healthy simulated GPU; nvml, inventory and every signal pass."""
    await h.start()
    await h.healthy("nvml")
    inv = await h.healthy("gpu/inventory")
    assert inv.value == 1
    for signal in ("lost", "xid", "ecc", "remap", "recovery_action", "thermal", "memory"):
        r = await h.healthy(f"gpu/{U0}/{signal}")
        assert r.gates == frozenset({"readiness", "gpu", f"gpu/{U0}"})
        assert r.labels["uuid"] == U0 and r.labels["gpu"] == "0"
    assert not any(gating(r) for r in h.sink.latest.values())
    assert h.metric("trt_health_gpu_memory_total_bytes", uuid=U0) == 81559 * 1024 * 1024
    assert h.metric("trt_health_gpu_temperature_celsius", uuid=U0) == 40
    assert h.metric("trt_health_nvml_up") == 1
    assert h.metric(
        "trt_health_gpu_info",
        uuid=U0,
        index="0",
        name="NVIDIA H100 80GB HBM3 (simulated)",
        pci_bus_id="00000000:18:00.0",
        driver="580.00 (simulated)",
        mig="false",
        backend="simulated",
    ) == 1
    assert h.component is not None and not h.component.gpu_fault()
    assert h.component.compute_capability() == "9.0"
    assert h.component.free_memory_mib() == 80000


async def test_xid79_is_node_fatal_sticky_persisted_and_clears_on_reset(h: Harness) -> None:
    """Xid 79 -> FATAL XidFatal79 at once; survives a restart via the state file; a reset clears."""
    comp = await h.start()
    await h.healthy(f"gpu/{U0}/xid")
    t0 = time.monotonic()
    h.write({"gpus": [gpu(0, xid=[79])]})
    r = await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    assert time.monotonic() - t0 < 1.0
    assert r.severity is Severity.FATAL and r.labels["scope"] == "node" and gating(r)
    assert comp.gpu_fault()
    assert h.metric("trt_health_gpu_xid_events_total", uuid=U0, code="79", **{"class": "node_fatal"}) == 1
    state = json.loads((h.state_dir / "gpu-latches.json").read_text())
    assert state["gpus"][U0]["latches"][0]["reason"] == "XidFatal79"

    # the Xid is gone from the scenario (NVML would not replay it): the latch alone keeps it
    h.write({"gpus": [gpu(0, xid=[])]})
    comp = await h.restart()
    r = await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    assert r.severity is Severity.FATAL
    assert h.metric("trt_health_gpu_fatal_latches", uuid=U0) == 1
    generation = comp.reset_generation()

    h.write({"gpus": [gpu(0, xid=[], reset=1)]})
    await h.healthy(f"gpu/{U0}/xid")
    assert comp.reset_generation() == generation + 1
    assert h.metric("trt_health_gpu_resets_observed_total", uuid=U0) == 1
    assert h.metric("trt_health_gpu_fatal_latches", uuid=U0) == 0
    assert not comp.gpu_fault() or not any(gating(r) for r in h.sink.latest.values())


async def test_latch_never_clears_by_time_and_reboot_clears(h: Harness) -> None:
    """A fatal latch stays across many polls without evidence; a new boot id is evidence."""
    await h.start()
    h.write({"gpus": [gpu(0, xid=[48])]})
    await h.reason(f"gpu/{U0}/xid", "XidGpuReset48")
    await h.apply({"gpus": [gpu(0, xid=[])]})
    for _ in range(3):  # several polls without evidence
        await h.poll()
    assert h.sink.latest[f"gpu/{U0}/xid"].reason == "XidGpuReset48"
    await h.restart(boot_id="boot-2")
    await h.healthy(f"gpu/{U0}/xid")


async def test_process_level_xid31_is_reported_not_gating(h: Harness) -> None:
    """Xid 31 (MMU fault) -> WARNING XidProcess31, counted, readiness unchanged, no latch."""
    await h.start()
    h.write({"gpus": [gpu(0, xid=[31])]})
    r = await h.reason(f"gpu/{U0}/xid", "XidProcess31")
    assert r.status is CheckStatus.FAIL and r.severity is Severity.WARNING and not gating(r)
    assert h.metric("trt_health_gpu_xid_events_total", uuid=U0, code="31", **{"class": "process"}) == 1
    # witness: a full poll ran after the Xid was handled (it saves what changed), and the event
    # path saves a latch before it submits its result; a file never written (nothing changed
    # that needs persisting) holds no latch either
    await h.poll()
    state_file = h.state_dir / "gpu-latches.json"
    persisted = state_file.read_text() if state_file.exists() else ""
    assert not persisted.count("XidProcess31")
    assert h.metric("trt_health_gpu_fatal_latches", uuid=U0) == 0
    # removing and adding the code again delivers it again
    await h.apply({"gpus": [gpu(0, xid=[])]})
    await h.apply({"gpus": [gpu(0, xid=[31])]})
    await await_until(
        lambda: h.metric("trt_health_gpu_xid_events_total", uuid=U0, code="31", **{"class": "process"}) == 2
    )


async def test_unknown_xid_warns_and_triggers_canary(h: Harness) -> None:
    """An Xid not in the catalogue -> WARNING XidUnknown<code> and an immediate canary run."""
    await h.start()
    h.write({"gpus": [gpu(0, xid=[201])]})
    r = await h.reason(f"gpu/{U0}/xid", "XidUnknown201")
    assert r.severity is Severity.WARNING
    assert "canary" in h.sink.triggers


async def test_xid_override_from_config(tmp_path: Path) -> None:
    """xid_overrides turns a process-level Xid into a GPU-fatal one."""
    from sidecar.gpu.xid import XidClass

    harness = Harness(tmp_path, fast_config(xid_overrides={31: XidClass.GPU_FATAL}))
    harness.write({"gpus": [gpu(0, xid=[31])]})
    try:
        await harness.start()
        r = await harness.reason(f"gpu/{U0}/xid", "XidGpuReset31")
        assert r.severity is Severity.FATAL
    finally:
        await harness.stop()


async def test_recovery_action_reset_and_back_to_none(h: Harness) -> None:
    """Recovery action gpu_reset -> FATAL RecoveryActionReset; back to none clears it and the
    Xid 48 latch that came with it (evidence), and increments reset_generation."""
    comp = await h.start()
    h.write({"gpus": [gpu(0, xid=[48], recovery_action="gpu_reset")]})
    r = await h.reason(f"gpu/{U0}/recovery_action", "RecoveryActionReset")
    assert r.severity is Severity.FATAL and r.value == "gpu_reset"
    await h.reason(f"gpu/{U0}/xid", "XidGpuReset48")
    assert h.metric("trt_health_gpu_recovery_action", uuid=U0) == 1
    gen = comp.reset_generation()
    h.write({"gpus": [gpu(0, xid=[48], recovery_action="none")]})
    await h.healthy(f"gpu/{U0}/recovery_action")
    await h.healthy(f"gpu/{U0}/xid")
    assert comp.reset_generation() == gen + 1


@pytest.mark.parametrize(
    ("action", "reason", "severity"),
    [
        ("node_reboot", "RecoveryActionReboot", Severity.FATAL),
        ("drain_and_reset", "RecoveryActionReset", Severity.FATAL),
        ("drain_p2p", "RecoveryActionDrainP2P", Severity.WARNING),
        ("recover_imex_domain", "RecoveryActionRecoverImex", Severity.WARNING),
    ],
)
async def test_recovery_action_classes(
    h: Harness, action: str, reason: str, severity: Severity
) -> None:
    """Each recovery action maps to its reason and severity (single-GPU model)."""
    h.write({"gpus": [gpu(0, recovery_action=action)]})
    await h.start()
    r = await h.reason(f"gpu/{U0}/recovery_action", reason)
    assert r.severity is severity


async def test_uncorrectable_ecc_without_xid_is_fatal_until_reset(h: Harness) -> None:
    """Volatile uncorrected ECC rises -> FATAL EccUncorrectable + canary; reset clears it."""
    await h.start()
    await h.healthy(f"gpu/{U0}/ecc")
    h.write({"gpus": [gpu(0, ecc_volatile_uncorrected=1)]})
    r = await h.reason(f"gpu/{U0}/ecc", "EccUncorrectable")
    assert r.severity is Severity.FATAL and gating(r)
    assert "canary" in h.sink.triggers
    assert h.metric("trt_health_gpu_ecc_errors", uuid=U0, counter="volatile", type="uncorrected") == 1
    assert h.metric("trt_health_gpu_ecc_events_total", uuid=U0, type="double_bit") == 1
    h.write({"gpus": [gpu(0, ecc_volatile_uncorrected=1, reset=1)]})
    await h.healthy(f"gpu/{U0}/ecc")
    assert h.metric("trt_health_gpu_ecc_errors", uuid=U0, counter="volatile", type="uncorrected") == 0


async def test_contained_ecc_with_xid94_is_a_warning(h: Harness) -> None:
    """Uncorrected ECC with Xid 94 (contained) -> WARNING EccContained, readiness unchanged."""
    await h.start()
    await h.healthy(f"gpu/{U0}/ecc")
    h.write({"gpus": [gpu(0, xid=[94], ecc_volatile_uncorrected=1)]})
    r = await h.reason(f"gpu/{U0}/ecc", "EccContained")
    assert r.severity is Severity.WARNING
    await h.reason(f"gpu/{U0}/xid", "XidProcess94")
    await h.poll()
    assert not any(gating(x) for x in h.sink.latest.values())


async def test_uncontained_ecc_with_xid95(h: Harness) -> None:
    """Uncorrected ECC with Xid 95 -> FATAL on both the ECC and the Xid conditions."""
    await h.start()
    h.write({"gpus": [gpu(0, xid=[95], ecc_volatile_uncorrected=2)]})
    r = await h.reason(f"gpu/{U0}/ecc", "EccUncorrectable")
    assert "Xid 95" in r.message
    await h.reason(f"gpu/{U0}/xid", "XidGpuReset95")


async def test_existing_uncorrected_count_at_first_start_fails_closed(h: Harness) -> None:
    """A volatile uncorrected count > 0 with no history -> FATAL (re-derived from NVML state)."""
    h.write({"gpus": [gpu(0, ecc_volatile_uncorrected=3)]})
    await h.start()
    await h.reason(f"gpu/{U0}/ecc", "EccUncorrectable")


async def test_corrected_ecc_rate_warns(h: Harness) -> None:
    """Corrected errors over ecc_corrected_warn within the window -> WARNING EccCorrectedRate."""
    await h.start()
    await h.healthy(f"gpu/{U0}/ecc")
    h.write({"gpus": [gpu(0, ecc_volatile_corrected=500)]})
    r = await h.reason(f"gpu/{U0}/ecc", "EccCorrectedRate")
    assert r.severity is Severity.WARNING and r.value == 500


async def test_remap_pending_warns_and_failure_is_sticky(h: Harness) -> None:
    """Remap pending -> WARNING; failure -> FATAL RemapFailure that stays until a reset."""
    await h.start()
    h.write({"gpus": [gpu(0, remap_pending=True)]})
    r = await h.reason(f"gpu/{U0}/remap", "RemapPending")
    assert r.severity is Severity.WARNING
    h.write({"gpus": [gpu(0, remap_failure=True)]})
    r = await h.reason(f"gpu/{U0}/remap", "RemapFailure")
    assert r.severity is Severity.FATAL
    assert h.metric("trt_health_gpu_remap_failure", uuid=U0) == 1
    await h.apply({"gpus": [gpu(0, remap_failure=False)]})
    await h.poll()
    assert h.sink.latest[f"gpu/{U0}/remap"].reason == "RemapFailure"
    h.write({"gpus": [gpu(0, remap_failure=False, reset=1)]})
    await h.healthy(f"gpu/{U0}/remap")


async def test_gpu_lost_is_node_fatal_and_sticky(h: Harness) -> None:
    """lost: true -> FATAL GpuLost (node scope); it stays after the GPU answers until a reset."""
    await h.start()
    h.write({"gpus": [gpu(0, lost=True)]})
    r = await h.reason(f"gpu/{U0}/lost", "GpuLost")
    assert r.severity is Severity.FATAL and r.labels["scope"] == "node"
    await h.apply({"gpus": [gpu(0, lost=False)]})
    await h.poll()
    assert h.sink.latest[f"gpu/{U0}/lost"].reason == "GpuLost"
    h.write({"gpus": [gpu(0, lost=False, reset=1)]})
    await h.healthy(f"gpu/{U0}/lost")


async def test_reset_required_error_is_gpu_fatal(h: Harness) -> None:
    """NVML RESET_REQUIRED -> FATAL GpuResetRequired until the GPU answers again."""
    await h.start()
    h.write({"gpus": [gpu(0, reset_required=True)]})
    r = await h.reason(f"gpu/{U0}/lost", "GpuResetRequired")
    assert r.severity is Severity.FATAL
    h.write({"gpus": [gpu(0, reset_required=False)]})
    await h.healthy(f"gpu/{U0}/lost")


async def test_thermal_thresholds_and_hw_slowdown(h: Harness) -> None:
    """Shutdown threshold -> FATAL; slowdown threshold and HW slowdown clocks -> WARNING."""
    await h.start()
    h.write({"gpus": [gpu(0, temperature_c=95)]})
    r = await h.reason(f"gpu/{U0}/thermal", "ThermalShutdown")
    assert r.severity is Severity.FATAL and r.value == 95
    h.write({"gpus": [gpu(0, temperature_c=88)]})
    r = await h.reason(f"gpu/{U0}/thermal", "ThermalSlowdown")
    assert r.severity is Severity.WARNING
    h.write({"gpus": [gpu(0, temperature_c=60, clock_event_reasons=["hw_thermal_slowdown"])]})
    await h.reason(f"gpu/{U0}/thermal", "ClocksHwSlowdown")
    assert h.metric("trt_health_gpu_clock_event_reasons", uuid=U0) == 0x40
    assert h.metric("trt_health_gpu_temperature_threshold_celsius", uuid=U0, threshold="shutdown") == 92


async def test_memory_numbers_and_sidecar_needs(h: Harness) -> None:
    """Low free memory is a WARNING only when the sidecar's own needs do not fit; metrics."""
    await h.start()
    h.write(
        {
            "gpus": [
                gpu(
                    0,
                    memory_total_mib=1000,
                    memory_free_mib=100,
                    processes=[{"pid": 4242, "used_mib": 900}],
                )
            ]
        }
    )
    r = await h.reason(f"gpu/{U0}/memory", "MemoryInsufficient")
    assert r.severity is Severity.WARNING and "100 MiB free" in r.message and not gating(r)
    assert h.metric("trt_health_gpu_memory_free_bytes", uuid=U0) == 100 * 1024 * 1024
    assert h.metric("trt_health_gpu_memory_used_bytes", uuid=U0) == 900 * 1024 * 1024
    assert h.metric("trt_health_gpu_processes", uuid=U0) == 1


async def test_exclusive_process_and_busy_are_reported(h: Harness) -> None:
    """compute_mode exclusive_process -> exclusive_process(); high utilisation -> busy()."""
    comp = await h.start()
    await h.healthy(f"gpu/{U0}/compute_mode")
    assert not comp.exclusive_process() and not comp.busy()
    h.write({"gpus": [gpu(0, compute_mode="exclusive_process", utilization_gpu=97)]})
    r = await h.reason(f"gpu/{U0}/compute_mode", "ExclusiveProcess")
    assert r.ok and r.value == "exclusive_process"
    assert comp.exclusive_process() and comp.busy()
    # the sidecar creates no context there, so its memory needs do not apply
    h.write({"gpus": [gpu(0, compute_mode="exclusive_process", memory_free_mib=10)]})
    await h.until(f"gpu/{U0}/memory", lambda r: r.value == 10)
    assert h.sink.latest[f"gpu/{U0}/memory"].ok


async def test_pcie_replay_rate(h: Harness) -> None:
    """PCIe replays rising by pcie_replay_warn within the window -> WARNING PcieReplayRate."""
    await h.start()
    await h.healthy(f"gpu/{U0}/pcie", within=3)
    h.write({"gpus": [gpu(0, pcie_replay=50)]})
    r = await h.reason(f"gpu/{U0}/pcie", "PcieReplayRate")
    assert r.severity is Severity.WARNING


async def test_inforom_check(h: Harness) -> None:
    """The InfoROM check reports a corrupted InfoROM as WARNING InforomInvalid."""
    comp = await h.start()
    await h.healthy("nvml")
    inforom = next(c for c in comp.checks() if c.name == "gpu/inforom")
    [r] = await inforom.run()
    assert r.ok and r.name == f"gpu/{U0}/inforom"
    await h.apply({"gpus": [gpu(0, inforom_valid=False)]})
    await h.healthy("nvml")
    [r] = await inforom.run()
    assert r.reason == "InforomInvalid" and r.severity is Severity.WARNING


async def test_multi_gpu_fault_on_any_gpu(tmp_path: Path) -> None:
    """Two GPUs: a fault on GPU 1 gates readiness and gpu/<uuid1> only; drain_p2p is fatal only
    with multi_gpu_model."""
    for multi, severity in ((False, Severity.WARNING), (True, Severity.FATAL)):
        harness = Harness(tmp_path / str(multi), fast_config(multi_gpu_model=multi))
        harness.tmp.mkdir()
        harness.write({"gpus": [gpu(0), gpu(1, recovery_action="drain_p2p", xid=[74])]})
        try:
            await harness.start()
            await harness.healthy(f"gpu/{U0}/recovery_action")
            r = await harness.reason(f"gpu/{U1}/recovery_action", "RecoveryActionDrainP2P")
            assert r.severity is severity
            assert f"gpu/{U1}" in r.gates and f"gpu/{U0}" not in r.gates
            x = await harness.until(f"gpu/{U1}/xid", lambda r: r.reason.endswith("74"))
            assert x.reason == ("XidNvlink74")
            assert x.severity is severity
            inv = await harness.healthy("gpu/inventory")
            assert inv.value == 2
        finally:
            await harness.stop()


async def test_mig_unsupported_signals_and_instance_filter(h: Harness) -> None:
    """MIG: remap is unmonitored (OK/INFO), Xids of other instances are ignored, ours counted,
    and a whole-GPU fault gates the instances' services too."""
    mig = {"uuid": "MIG-sim-a", "gi": 1, "ci": 0}
    await h.start()
    h.write({"gpus": [gpu(0, mig=True, mig_instances=[mig])]})
    # one sample may still carry the inventory enumerated before the MIG change: wait for the
    # one that knows the instance (the witness), then check what it says
    r = await h.until(
        f"gpu/{U0}/remap", lambda r: r.reason == "Unmonitored" and "gpu/MIG-sim-a" in r.gates
    )
    assert r.ok and r.severity is Severity.INFO
    h.write(
        {
            "gpus": [
                gpu(
                    0,
                    mig=True,
                    mig_instances=[mig],
                    xid=[{"code": 31, "gi": 2, "ci": 0}, {"code": 13, "gi": 1, "ci": 0}],
                )
            ]
        }
    )
    await h.reason(f"gpu/{U0}/xid", "XidProcess13")
    assert h.metric("trt_health_gpu_xid_events_ignored_total", uuid=U0, code="31") == 1
    assert h.metric("trt_health_gpu_xid_events_total", uuid=U0, code="31", **{"class": "process"}) is None
    h.write({"gpus": [gpu(0, mig=True, mig_instances=[mig], xid=[{"code": 79}])]})
    x = await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    assert {"gpu/MIG-sim-a", f"gpu/{U0}", "readiness"} <= x.gates


async def test_expected_uuids_and_count(tmp_path: Path) -> None:
    """An expected GPU that is not visible -> CRITICAL GpuMissing naming it."""
    harness = Harness(tmp_path, fast_config(expected_uuids=(U0, "GPU-missing"), expected_count=2))
    harness.write({})
    try:
        await harness.start()
        r = await harness.reason("gpu/inventory", "GpuMissing")
        assert r.severity is Severity.CRITICAL and "GPU-missing" in r.message
        assert r.labels["missing"] == "GPU-missing"
    finally:
        await harness.stop()
    harness = Harness(tmp_path / "b", fast_config(expected_count=2))
    harness.tmp.mkdir()
    harness.write({})
    try:
        await harness.start()
        r = await harness.reason("gpu/inventory", "GpuMissing")
        assert "1 GPU(s) visible, 2 expected" in r.message
    finally:
        await harness.stop()


async def test_nvml_unavailable_then_back(h: Harness) -> None:
    """nvml.unavailable -> nvml FAIL CRITICAL DriverNotLoaded with the text; recovers after."""
    h.write({"nvml": {"unavailable": "DriverNotLoaded"}})
    comp = await h.start()
    r = await h.reason("nvml", "DriverNotLoaded")
    assert r.status is CheckStatus.FAIL and r.severity is Severity.CRITICAL
    assert "DriverNotLoaded" in r.message and gating(r)
    assert comp.gpu_fault()
    assert h.metric("trt_health_nvml_up") == 0
    h.write({})
    await h.healthy("nvml")
    await h.healthy(f"gpu/{U0}/ecc")


async def test_hung_nvml_call_is_a_finding_without_stacking_threads(h: Harness) -> None:
    """A hung call -> nvml UNKNOWN NvmlHung within nvml_call_timeout; later polls do not start
    more stuck threads; when the call returns, NVML is healthy again."""
    comp = await h.start()
    await h.healthy("nvml")
    before = threading.active_count()
    h.write({"gpus": [gpu(0, nvml_hang=True)]})
    t0 = time.monotonic()
    r = await h.reason("nvml", "NvmlHung", within=2)
    assert time.monotonic() - t0 < 1.5
    assert r.status is CheckStatus.UNKNOWN and r.severity is Severity.CRITICAL
    poll = next(c for c in comp.checks() if c.name == "gpu")
    for _ in range(3):
        results = await poll.run()  # refused at once, no new thread
        assert any(x.reason == "NvmlHung" for x in results)
    assert threading.active_count() <= before + 1
    assert h.metric("trt_health_nvml_calls_hung_total", op="sample") == 1
    h.write({"gpus": [gpu(0, nvml_hang=False)]})
    await h.healthy("nvml")


async def test_bad_scenario_keeps_last_good_state(h: Harness) -> None:
    """A gpus: section that does not validate is ignored; the last good state stays."""
    await h.start()
    h.write({"gpus": [gpu(0, temperature_c=88)]})
    await h.reason(f"gpu/{U0}/thermal", "ThermalSlowdown")
    h.write({"gpus": [gpu(0, temperature_c="hot")]})
    # witness: the whole document is rejected where it is read (the scenario file), naming the field
    await await_until(lambda: "temperature_c" in (h.scenario.last_error or ""), what="rejection")
    await h.poll()
    assert h.sink.latest[f"gpu/{U0}/thermal"].reason == "ThermalSlowdown"


async def test_unsupported_signals_are_unmonitored(h: Harness) -> None:
    """Signals listed as unsupported are OK / INFO / Unmonitored and their gauge says 0."""
    h.write({"gpus": [gpu(0, unsupported=["ecc", "recovery_action", "temperature_c"])]})
    await h.start()
    for signal in ("ecc", "recovery_action", "thermal"):
        r = await h.reason(f"gpu/{U0}/{signal}", "Unmonitored")
        assert r.ok and r.severity is Severity.INFO
    assert h.metric("trt_health_gpu_signal_monitored", uuid=U0, signal="ecc") == 0
    assert h.metric("trt_health_gpu_signal_monitored", uuid=U0, signal="memory") == 1


async def test_corrupt_state_file_is_reported_and_rederived(h: Harness) -> None:
    """A state file that does not parse -> gating LatchStoreCorrupt (its latches are unknown);
    NVML state is still derived beside it."""
    h.state_dir.mkdir()
    (h.state_dir / "gpu-latches.json").write_text("{not json", encoding="utf-8")
    h.write({"gpus": [gpu(0, remap_failure=True)]})
    await h.start()
    r = await h.reason("gpu/state", "LatchStoreCorrupt")
    assert r.severity is Severity.CRITICAL and gating(r)
    await h.reason(f"gpu/{U0}/remap", "RemapFailure")


async def test_fatal_xid_with_the_reset_stays_latched(h: Harness) -> None:
    """A fatal Xid that arrives together with the reset evidence (it may have come after the
    reset) is not cleared by that reset: fail closed until the next evidence."""
    await h.start()
    await h.healthy(f"gpu/{U0}/xid")
    h.write({"gpus": [gpu(0, xid=[79])]})
    await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    await h.poll()  # at least one sample sees the pre-reset state
    h.write({"gpus": [gpu(0, xid=[48], reset=1)]})
    r = await h.reason(f"gpu/{U0}/xid", "XidGpuReset48")
    assert r.severity is Severity.FATAL and gating(r)
    await h.poll()
    assert h.sink.latest[f"gpu/{U0}/xid"].reason == "XidGpuReset48"
    h.write({"gpus": [gpu(0, xid=[48], reset=2)]})
    await h.healthy(f"gpu/{U0}/xid")
