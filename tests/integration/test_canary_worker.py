"""The canary with a real worker process (ONNX Runtime runner on CPU) and real faults."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidecar.canary.metrics import CanaryMetrics
from sidecar.canary.protocol import LoadRequest
from sidecar.canary.supervisor import CanarySupervisor, SupervisorSettings
from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.testing import SteppableClock, await_until
from sidecar.testing.canary import ENGINES, GpuState, Sink, main, make, reason, set_scenario, until


async def test_onnxruntime_canary_passes_and_reports_metrics(tmp_path: Path) -> None:
    """The full path: start returns at once, Starting first, then CanaryPassed with metrics."""
    comp, _, reg = make(tmp_path)
    sink = Sink()
    await comp.start(sink)
    assert not comp.supervisor.ready  # start() returned before the worker had loaded
    first = main(await comp.run_canary())
    assert first.status is CheckStatus.UNKNOWN and first.reason in ("Starting", "LoadingEngine")
    assert first.gates == frozenset({"readiness", "canary"})
    try:
        res = await until(comp, reason("CanaryPassed"))
        ok = main(res)
        assert ok.ok and "onnxruntime" in ok.message and ok.labels["runner"] == "onnxruntime"
        assert comp.supervisor.pid not in (None, os.getpid())
        assert {r.name for r in res} >= {"canary", "canary/latency", "canary/worker-memory"}
        assert sink.triggers == ["canary"]  # the keeper asks for the first canary at once
        assert reg.get_sample_value("trt_health_canary_results_total", {"outcome": "pass"}) == 1
        count = reg.get_sample_value("trt_health_canary_latency_seconds_count", {"runner": "onnxruntime"})
        assert count == 1
        assert (reg.get_sample_value("trt_health_canary_worker_startup_seconds") or 0) > 0
        assert (reg.get_sample_value("trt_health_canary_worker_rss_bytes") or 0) > 1 << 20
        pid = comp.supervisor.pid
        await until(comp, reason("CanaryPassed"))
        assert comp.supervisor.pid == pid  # the worker (and its session) is kept
    finally:
        await comp.stop()
    assert comp.supervisor.proc is None


async def test_auto_runner_on_cpu_machine_says_why(tmp_path: Path) -> None:
    """runner: auto without GPU or plan picks onnxruntime and says what it skipped."""
    comp, _, _ = make(tmp_path, runner="auto")
    await comp.start(Sink())
    try:
        ok = main(await until(comp, reason("CanaryPassed")))
        assert "auto" in ok.message and "tensorrt: no canary plan" in ok.message
        assert ok.labels["runner"] == "onnxruntime"
    finally:
        await comp.stop()


async def test_crash_reports_signal_and_worker_recovers(tmp_path: Path) -> None:
    """mode: crash kills the real worker with SIGSEGV; reported, restarted, passes again."""
    comp, sf, reg = make(tmp_path, simulate=True, scenario={"canary": {"mode": "ok"}})
    assert sf is not None
    await comp.start(Sink())
    try:
        await until(comp, reason("CanaryPassed"))
        pid = comp.supervisor.pid
        set_scenario(sf, {"canary": {"mode": "crash"}})
        crash = main(await until(comp, reason("WorkerCrashed")))
        assert crash.labels["cause"] == "SIGSEGV" and "SIGSEGV" in crash.message
        assert crash.severity is Severity.CRITICAL
        assert reg.get_sample_value("trt_health_canary_worker_restarts_total", {"cause": "SIGSEGV"}) == 1
        set_scenario(sf, {"canary": {"mode": "ok"}})
        await until(comp, reason("CanaryPassed"))
        assert comp.supervisor.pid != pid
    finally:
        await comp.stop()


async def test_hang_is_killed_at_deadline_and_restarted(tmp_path: Path) -> None:
    """mode: hang makes the worker block; it is SIGKILLed at the deadline and replaced."""
    comp, sf, reg = make(tmp_path, simulate=True, scenario={"canary": {"mode": "ok"}}, timeout_s=0.5)
    assert sf is not None
    await comp.start(Sink())
    try:
        await until(comp, reason("CanaryPassed"))
        pid = comp.supervisor.pid
        assert pid is not None
        set_scenario(sf, {"canary": {"mode": "hang"}})
        t0 = time.monotonic()
        res = main(await comp.run_canary())
        took = time.monotonic() - t0
        assert res.reason == "CanaryTimeout" and 0.5 <= took < 3.0, (res, took)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # really gone
        assert (
            reg.get_sample_value("trt_health_canary_worker_restarts_total", {"cause": "CanaryTimeout"}) == 1
        )
        set_scenario(sf, {"canary": {"mode": "ok"}})
        await until(comp, reason("CanaryPassed"))
        assert comp.supervisor.pid != pid
    finally:
        await comp.stop()


async def test_wrong_output_is_fatal_sticky_until_gpu_reset(tmp_path: Path) -> None:
    """mode: wrong -> CanaryMismatch FATAL; stays after the fault clears; a reset plus
    recovery_passes matching canaries clear it."""
    gpu = GpuState()
    comp, sf, reg = make(
        tmp_path,
        simulate=True,
        scenario={"canary": {"mode": "wrong"}},
        gpu=gpu,
        recovery_passes=2,
    )
    assert sf is not None
    await comp.start(Sink())
    try:
        bad = main(await until(comp, reason("CanaryMismatch")))
        assert bad.severity is Severity.FATAL and "max abs error" in bad.message
        set_scenario(sf, {"canary": {"mode": "ok"}})
        for _ in range(3):
            assert main(await comp.run_canary()).reason == "CanaryMismatch"
        gpu.generation += 1
        rec = main(await comp.run_canary())
        assert rec.reason == "CanaryMismatch" and "recovering: 1/2" in rec.message
        assert main(await comp.run_canary()).reason == "CanaryPassed"
        assert reg.get_sample_value("trt_health_canary_results_total", {"outcome": "mismatch"})
    finally:
        await comp.stop()


async def test_slow_is_latency_warning_then_timeout(tmp_path: Path) -> None:
    """mode: slow over the budget is a latency WARNING (canary still OK); past the
    deadline it is a CanaryTimeout."""
    comp, sf, _ = make(
        tmp_path,
        simulate=True,
        scenario={"canary": {"mode": "slow", "delay_ms": 120}},
        latency_budget_ms=50.0,
        timeout_s=0.6,
    )
    assert sf is not None
    await comp.start(Sink())
    try:
        res = await until(comp, reason("CanaryPassed"))
        lat = next(r for r in res if r.name == "canary/latency")
        assert lat.status is CheckStatus.FAIL and lat.severity is Severity.WARNING
        assert lat.reason == "CanaryLatencyOverBudget"
        set_scenario(sf, {"canary": {"mode": "slow", "delay_ms": 1500}})
        assert main(await comp.run_canary()).reason == "CanaryTimeout"
    finally:
        await comp.stop()


async def test_slow_gates_when_configured(tmp_path: Path) -> None:
    """latency_gates_readiness: true makes the over-budget latency CRITICAL."""
    comp, _, _ = make(
        tmp_path,
        simulate=True,
        scenario={"canary": {"mode": "slow", "delay_ms": 80}},
        latency_budget_ms=10.0,
        latency_gates_readiness=True,
    )
    await comp.start(Sink())
    try:
        res = await until(comp, reason("CanaryPassed"))
        lat = next(r for r in res if r.name == "canary/latency")
        assert lat.status is CheckStatus.FAIL and lat.severity is Severity.CRITICAL
    finally:
        await comp.stop()


async def test_leak_is_reported_with_rss_growth(tmp_path: Path) -> None:
    """mode: leak grows the worker's RSS each canary; growth past the limit is a warning."""
    comp, _, reg = make(
        tmp_path,
        simulate=True,
        scenario={"canary": {"mode": "leak", "leak_mib": 24}},
        rss_growth_warn_mib=40.0,
    )
    await comp.start(Sink())
    try:
        await until(comp, reason("CanaryPassed"))
        rss0 = reg.get_sample_value("trt_health_canary_worker_rss_bytes") or 0
        mem: CheckResult | None = None
        for _ in range(4):
            res = await comp.run_canary()
            mem = next(r for r in res if r.name == "canary/worker-memory")
        assert mem is not None and mem.reason == "WorkerMemoryGrowth"
        assert mem.severity is Severity.WARNING and "MiB" in mem.message
        rss1 = reg.get_sample_value("trt_health_canary_worker_rss_bytes") or 0
        assert rss1 - rss0 > 60 * (1 << 20)
    finally:
        await comp.stop()


async def test_leak_past_max_rss_replaces_worker(tmp_path: Path) -> None:
    """A worker over worker_max_rss_mib is replaced (cause memory_limit)."""
    comp, _, reg = make(
        tmp_path,
        simulate=True,
        scenario={"canary": {"mode": "leak", "leak_mib": 64}},
        worker_max_rss_mib=150.0,
    )
    await comp.start(Sink())
    try:
        for _ in range(200):
            res = await comp.run_canary()
            if any(r.reason == "WorkerMemoryLimit" for r in res):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("memory limit never reached")
        assert reg.get_sample_value("trt_health_canary_worker_restarts_total", {"cause": "memory_limit"}) == 1
    finally:
        await comp.stop()


async def test_scenario_ignored_without_simulate(tmp_path: Path) -> None:
    """With simulate=False the scenario's canary: key never reaches the worker."""
    comp, _, _ = make(tmp_path, simulate=False, scenario={"canary": {"mode": "crash"}})
    await comp.start(Sink())
    try:
        await until(comp, reason("CanaryPassed"))
        assert main(await comp.run_canary()).reason == "CanaryPassed"
    finally:
        await comp.stop()


async def test_exclusive_process_creates_no_worker(tmp_path: Path) -> None:
    """Under EXCLUSIVE_PROCESS a GPU runner starts no worker and reports INFO, OK."""
    gpu = GpuState()
    gpu.exclusive = True
    comp, _, _ = make(tmp_path, runner="auto", gpu=gpu)
    await comp.start(Sink())
    try:
        # witness: the worker keeper decided twice (it looks again every second) and started
        # nothing in between
        await await_until(lambda: gpu.exclusive_calls >= 2, timeout=10)
        assert comp.supervisor.proc is None
        res = main(await comp.run_canary())
        assert res.ok and res.reason == "ExclusiveProcessMode" and res.severity is Severity.INFO
        assert comp.supervisor.proc is None
    finally:
        await comp.stop()


async def test_busy_gpu_skips_within_max_skip(tmp_path: Path) -> None:
    """While busy the canary is skipped (OK) for up to max_skip after the last pass."""
    gpu = GpuState()
    clock = SteppableClock()
    comp, _, reg = make(tmp_path, gpu=gpu, clock=clock, max_skip_s=1.0)
    await comp.start(Sink())
    try:
        await until(comp, reason("CanaryPassed"))
        gpu.is_busy = True
        skipped = main(await comp.run_canary())
        assert skipped.ok and skipped.reason == "CanarySkipped"
        assert reg.get_sample_value("trt_health_canary_results_total", {"outcome": "skipped"})
        clock.advance(1.05)
        assert main(await comp.run_canary()).reason == "CanaryPassed"  # ran anyway
    finally:
        await comp.stop()


async def test_load_failure_backs_off_exponentially(tmp_path: Path) -> None:
    """A worker that cannot load is replaced with doubling delays and a named reason."""
    reg = CollectorRegistry()
    req = LoadRequest("onnxruntime", str(tmp_path / "missing.yaml"), None)
    sup = CanarySupervisor(
        req, SupervisorSettings(backoff_initial_s=0.5, backoff_max_s=5.0), CanaryMetrics(reg)
    )
    try:
        err1 = await sup.start()
        assert err1 is not None and err1.reason == "EngineMissing"
        assert 0.3 < sup.backoff_remaining() <= 0.5
        err2 = await sup.start()
        assert err2 is not None and 0.8 < sup.backoff_remaining() <= 1.0
        assert sup.failures == 2 and sup.proc is None
        assert (
            reg.get_sample_value("trt_health_canary_worker_restarts_total", {"cause": "EngineMissing"}) == 2
        )
    finally:
        await sup.stop()


async def test_broken_model_file_is_a_reason(tmp_path: Path) -> None:
    """A garbage model behind a valid manifest fails the load with EngineLoadFailed."""
    d = tmp_path / "m"
    d.mkdir()
    for f in ("manifest.yaml", "golden_input.npy", "golden_output.npy"):
        (d / f).write_bytes((ENGINES / "canary" / f).read_bytes())
    (d / "canary.onnx").write_bytes(b"not a model")
    reg = CollectorRegistry()
    sup = CanarySupervisor(
        LoadRequest("onnxruntime", str(d / "manifest.yaml"), None),
        SupervisorSettings(),
        CanaryMetrics(reg),
    )
    try:
        err = await sup.start()
        assert err is not None and err.reason == "EngineLoadFailed"
    finally:
        await sup.stop()


async def test_tensorrt_runner_without_gpu_fails_cleanly(tmp_path: Path) -> None:
    """runner: tensorrt on a machine without a GPU is a reason, never a segfault (no Runtime
    is created before CUDA is proven); auto then falls through to onnxruntime."""
    d = tmp_path / "plan"
    d.mkdir()
    for f in ("golden_input.npy", "golden_output.npy"):
        (d / f).write_bytes((ENGINES / "canary" / f).read_bytes())
    (d / "c.plan").write_bytes(b"ftrt" + bytes(100))
    raw = yaml.safe_load((ENGINES / "canary" / "manifest.yaml").read_text())
    raw.update(file="c.plan", format="tensorrt-plan", sha256=None, size=None)
    (d / "c.manifest.yaml").write_text(yaml.safe_dump(raw))
    reg = CollectorRegistry()
    sup = CanarySupervisor(
        LoadRequest("tensorrt", None, str(d / "c.manifest.yaml")),
        SupervisorSettings(),
        CanaryMetrics(reg),
    )
    try:
        err = await sup.start()
        assert err is not None and err.reason in ("NoGpu", "RunnerUnavailable"), err
        assert sup.last_death is not None and sup.last_death.reason != "WorkerCrashed"
    finally:
        await sup.stop()
    comp, _, _ = make(tmp_path, runner="auto", tensorrt_manifest=d / "c.manifest.yaml")
    await comp.start(Sink())
    try:
        ok = main(await until(comp, reason("CanaryPassed")))
        assert ok.labels["runner"] == "onnxruntime" and "skipped tensorrt" in ok.message
    finally:
        await comp.stop()
