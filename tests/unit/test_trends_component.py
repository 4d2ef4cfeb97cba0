"""The trends component (sidecar/trends/component.py) driven with recorded results and fake
GPU samples: latency drift with its likely cause, counter trends, persistence, GPUs leaving."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.config import ConfigError, Section
from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.gpu.backend import EccCounters, GpuInfo, GpuSample
from sidecar.trends.cause import CLOCK_EVENT_SW_POWER_CAP
from sidecar.trends.component import TrendComponent
from sidecar.trends.config import TrendsConfig, parse_trends_config
from sidecar.trends.detectors import DriftSettings
from sidecar.trends.tracker import COND_LATENCY

UUID = "GPU-0"


class FakeGpu:
    """The GPU component's latest samples, set by the test."""

    def __init__(self) -> None:
        self.samples: dict[str, tuple[float, GpuSample]] = {}

    def latest_samples(self) -> Mapping[str, tuple[float, GpuSample]]:
        return self.samples

    def put(self, wall: float, uuid: str = UUID, **fields: object) -> None:
        self.samples[uuid] = (wall, GpuSample(info=GpuInfo(0, uuid, "NVIDIA H200"), **fields))  # type: ignore[arg-type]


class NullSink:
    def submit(self, results: object) -> None:
        pass

    def trigger(self, check_name: str) -> None:
        pass


def make(tmp_path: Path, gpu: FakeGpu, **kw: object) -> tuple[TrendComponent, CollectorRegistry]:
    cfg = TrendsConfig(latency=DriftSettings(warmup=10), latency_enabled=True, **kw)  # type: ignore[arg-type]
    reg = CollectorRegistry()
    return TrendComponent(cfg, registry=reg, state_dir=tmp_path, gpu_samples=gpu, wall=lambda: 0.0), reg


def latency(value: float) -> CheckResult:
    return CheckResult.passed("canary/latency", value=value, labels={"runner": "cuda-kernel"})


def by_name(results: list[CheckResult], name: str) -> CheckResult:
    (r,) = [x for x in results if x.name == name]
    return r


def run(comp: TrendComponent) -> list[CheckResult]:
    return asyncio.run(comp.evaluate(0.0003))


def test_latency_drift_warns_with_the_likely_cause(tmp_path: Path) -> None:
    """A sustained rise of the canary latency while NVML reports a power cap is a
    LatencyDrift WARNING labelled power_throttle, exported as a trend-warning series."""
    gpu = FakeGpu()
    gpu.put(0.0, clock_event_reasons=0)
    comp, reg = make(tmp_path, gpu)
    comp.observe([latency(1e-3 * (1 + 0.001 * (i % 3))) for i in range(10)])
    steady = by_name(run(comp), COND_LATENCY)
    assert steady.status is CheckStatus.OK and "baseline" in steady.message
    gpu.put(1.0, clock_event_reasons=CLOCK_EVENT_SW_POWER_CAP)
    comp.observe([latency(1.3e-3)] * 6)
    r = by_name(run(comp), COND_LATENCY)
    assert (r.status, r.reason, r.severity) == (CheckStatus.FAIL, "LatencyDrift", Severity.WARNING)
    assert r.labels["cause"] == "power_throttle" and "1.30x" in r.message
    assert (
        reg.get_sample_value(
            "trt_health_trend_warning",
            {"subject": COND_LATENCY, "reason": "LatencyDrift", "cause": "power_throttle"},
        )
        == 1
    )
    # back at the baseline: the warning clears and its series goes
    comp.observe([latency(1e-3)] * 200)
    assert by_name(run(comp), COND_LATENCY).ok
    assert (
        reg.get_sample_value(
            "trt_health_trend_warning",
            {"subject": COND_LATENCY, "reason": "LatencyDrift", "cause": "power_throttle"},
        )
        is None
    )


def test_gates_readiness_only_when_configured(tmp_path: Path) -> None:
    gpu = FakeGpu()
    comp, _ = make(tmp_path, gpu, gates_readiness=True)
    comp.observe([latency(1e-3)] * 10 + [latency(2e-3)] * 6)
    r = by_name(run(comp), COND_LATENCY)
    assert r.reason == "LatencyDrift" and r.severity is Severity.CRITICAL


def test_corrected_ecc_rate_rising(tmp_path: Path) -> None:
    """30 corrected errors an hour (threshold 10/h) become EccRateRising once ten minutes of
    history exist; the rate is exported per GPU."""
    gpu = FakeGpu()
    comp, reg = make(tmp_path, gpu)
    results: list[CheckResult] = []
    for minute in range(0, 31):
        gpu.put(minute * 60.0, ecc=EccCounters(aggregate_corrected=minute // 2))
        results = run(comp)
    r = by_name(results, f"gpu/{UUID}/trend/ecc")
    assert (r.status, r.reason) == (CheckStatus.FAIL, "EccRateRising")
    rate = reg.get_sample_value(
        "trt_health_trend_counter_rate_per_hour", {"uuid": UUID, "counter": "ecc_corrected"}
    )
    assert rate == pytest.approx(30.0, rel=0.1)


def test_history_survives_a_restart(tmp_path: Path) -> None:
    """The baseline learned before a restart judges the first canary after it."""
    gpu = FakeGpu()
    comp, _ = make(tmp_path, gpu)
    comp.observe([latency(1e-3)] * 10)
    asyncio.run(comp.stop())
    doc = json.loads((tmp_path / "trends.json").read_text())
    assert doc["version"] == 1 and doc["drift"]["canary"]["baseline"] == pytest.approx(1e-3)
    again, _ = make(tmp_path, gpu)
    asyncio.run(again.start(NullSink()))
    again.observe([latency(2e-3)] * 6)
    assert by_name(run(again), COND_LATENCY).reason == "LatencyDrift"


def test_unreadable_history_starts_fresh(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "trends.json").write_bytes(b"\xff" + b"[" * 100_000)
    comp, _ = make(tmp_path, FakeGpu())
    asyncio.run(comp.start(NullSink()))
    assert any("trend history" in r.getMessage() for r in caplog.records)
    assert "learning" in by_name(run(comp), COND_LATENCY).message


def test_a_gpu_that_leaves_takes_its_trends(tmp_path: Path) -> None:
    gpu = FakeGpu()
    comp, reg = make(tmp_path, gpu)
    for minute in range(0, 31):
        gpu.put(minute * 60.0, ecc=EccCounters(aggregate_corrected=minute * 10))
        run(comp)
    subject = {"subject": f"gpu/{UUID}/trend/ecc", "reason": "EccRateRising", "cause": "ecc_corrected"}
    assert reg.get_sample_value("trt_health_trend_warning", subject) == 1
    gpu.samples.clear()
    results = run(comp)
    assert all(not r.name.startswith("gpu/") for r in results)
    assert reg.get_sample_value("trt_health_trend_warning", subject) is None
    assert comp.book.to_state()["counters"] == {}


def parse(raw: object) -> tuple[TrendsConfig, list[str]]:
    errors: list[str] = []
    cfg = parse_trends_config(Section(raw, "trends", errors))
    return cfg, errors


def test_config_parses_and_names_bad_fields() -> None:
    cfg, errors = parse({"latency": {"warmup": 30, "h": 12}, "ecc_corrected": {"rate_per_hour": 5}})
    assert not errors and cfg.latency.warmup == 30 and cfg.counters["ecc_corrected"].rate_per_hour == 5
    _, errors = parse({"latency": {"warmup": 1, "bogus": 1}, "pcie_replays": {"window": "1s"}, "x": 1})
    text = "\n".join(errors)
    for field in ("trends.latency.warmup", "trends.latency.bogus", "trends.pcie_replays.window", "trends.x"):
        assert field in text, text
    with pytest.raises(ConfigError):
        raise ConfigError(errors)


def test_unwritable_history_is_logged_once_per_streak(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state dir that cannot be written is reported once, not every persist interval."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    comp = TrendComponent(
        TrendsConfig(persist_interval_s=1.0),
        registry=CollectorRegistry(),
        state_dir=blocker,  # a regular file: every write fails (also as root)
        gpu_samples=FakeGpu(),
        wall=iter(range(0, 100, 2)).__next__,
    )
    for _ in range(5):
        run(comp)
    warnings = [r for r in caplog.records if r.getMessage() == "trend history not written"]
    assert len(warnings) == 1


def test_restored_counter_history_survives_a_start_before_the_first_gpu_sample(tmp_path: Path) -> None:
    """At start-up the GPU component has not sampled yet (no samples): the counter history
    read back from trends.json is kept, not forgotten and written over."""
    gpu = FakeGpu()
    comp, _ = make(tmp_path, gpu)
    for minute in range(0, 31):
        gpu.put(minute * 60.0, ecc=EccCounters(aggregate_corrected=minute * 10))
        run(comp)
    asyncio.run(comp.stop())
    again, _ = make(tmp_path, FakeGpu())  # nothing sampled yet
    asyncio.run(again.start(NullSink()))
    run(again)
    asyncio.run(again.stop())
    doc = json.loads((tmp_path / "trends.json").read_text())
    assert f"gpu/{UUID}/ecc_corrected" in doc["counters"]


def test_counter_series_go_with_the_gpu(tmp_path: Path) -> None:
    """A GPU that leaves takes its rate series with it (no stale rate or forecast)."""
    gpu = FakeGpu()
    comp, reg = make(tmp_path, gpu)
    for minute in range(0, 31):
        gpu.put(minute * 60.0, ecc=EccCounters(aggregate_corrected=minute))
        run(comp)
    labels = {"uuid": UUID, "counter": "ecc_corrected"}
    assert reg.get_sample_value("trt_health_trend_counter_rate_per_hour", labels) is not None
    gpu.samples.clear()
    gpu.put(1900.0, uuid="GPU-1", ecc=EccCounters(aggregate_corrected=0))
    run(comp)
    assert reg.get_sample_value("trt_health_trend_counter_rate_per_hour", labels) is None


def test_latency_drift_is_opt_in(tmp_path: Path) -> None:
    """By default no latency condition exists and latencies are not folded (counter trends
    still run): a host-timed canary on a busy host is not stationary enough to warn on."""
    cfg, errors = parse({})
    assert not errors and cfg.latency_enabled is False
    comp = TrendComponent(cfg, registry=CollectorRegistry(), state_dir=tmp_path, gpu_samples=FakeGpu())
    comp.observe([latency(1e-3)] * 10 + [latency(5e-3)] * 200)
    assert all(r.name != COND_LATENCY for r in run(comp))
    assert comp.book.to_state()["drift"] == {}
    on, errors = parse({"latency": {"enabled": True}})
    assert not errors and on.latency_enabled
