"""Verdict -> action against a real MLServer (1.7, Seldon's; nobody here wrote it) serving two
versions of each model. Every test asserts what the server has loaded afterwards: its
``/v2/repository/index`` and a real inference (whose ``model_version`` says who answered).

The actions component is driven directly with evidence objects: a real EngineComponent on real
engine files (rollback, dry run) or the results other components produce (GPU faults, memory
pressure, the fallback's canary). Clocks are stepped for backoff, flapping and hysteresis.
Without MLServer (``TRT_HEALTH_TEST_MLSERVER``) these tests skip and say why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from sidecar.actions.component import ActionsComponent
from sidecar.actions.config import parse_actions_config
from sidecar.actions.report import SERVICE_PRIMARY
from sidecar.config import Section
from sidecar.core.policy import HealthPolicy
from sidecar.core.values import SERVICE_READINESS, CheckResult, Severity, Transition
from sidecar.engine.config import EngineSpec
from sidecar.testing import SteppableClock
from sidecar.testing.engine import config, plan_bytes, started, write_engine
from sidecar.testing.mlserver import (
    CANARY_DIR,
    MLServer,
    index,
    infer_version,
    mlserver_exe,
    running_mlserver,
)
from sidecar.workload.component import WorkloadComponent
from sidecar.workload.config import parse_workload_config
from sidecar.workload.probes import WorkloadProbe, make_probe

MODELS = {
    "rb": ["1", "2"],
    "gpu": ["1", "2"],
    "flap": ["1", "2"],
    "fb": ["0", "2"],
    "dry": ["1", "2"],
    "adopt": ["1", "2"],
    "slow": ["1", "2"],
}
DELAYS = {("slow", "2"): 0.08}  # version 2 of "slow" answers 80 ms later
GOLDEN = [float(v) for v in np.load(CANARY_DIR / "golden_output.npy").flatten()]


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    if mlserver_exe() is None:
        pytest.skip("MLServer not available: set TRT_HEALTH_TEST_MLSERVER (see module docstring)")
    with running_mlserver(tmp_path_factory.mktemp("mlserver-actions"), MODELS, delays=DELAYS) as server:
        yield server


def make(
    server: MLServer, model: str, clock: SteppableClock, **raw: Any
) -> tuple[ActionsComponent, list[Transition], CollectorRegistry]:
    errors: list[str] = []
    doc: dict[str, Any] = {
        "enabled": True,
        "server": "mlserver",
        "url": server.url,
        "repository_dir": str(server.root / model),
        "timeout": "10s",
        "engines": [{"engine": model, "model": model, "rollback": True}],
        "rollback": {"backoff_initial": 0, "max_rollbacks": 2, "flap_window": "1h"},
    }
    doc.update(raw)
    cfg = parse_actions_config(Section(doc, "actions", errors))
    assert errors == []
    announced: list[Transition] = []
    registry = CollectorRegistry()

    def probe(name: str, version: str | None) -> WorkloadProbe:
        errs: list[str] = []
        wl = {
            "enabled": True,
            "kind": "kserve-http",
            "url": server.url,
            "model": name,
            "model_version": version or "",
            "manifest": str(CANARY_DIR / "manifest.yaml"),
            "timeout": "5s",
        }
        return make_probe(parse_workload_config(Section(wl, "workload", errs)))

    comp = ActionsComponent(
        cfg, registry=registry, clock=clock, announce=announced.append, probe_factory=probe
    )
    return comp, announced, registry


def engine_results(
    engine: str, version: str, *, bad: str | None = None, sha: str = "a" * 64
) -> list[CheckResult]:
    """The verification results the engine component reports for one engine version."""
    labels = {"engine": engine, "version": version, "sha256": sha}
    out = []
    for suffix in ("manifest", "file", "checksum", "plan", "version", "arch"):
        name = f"engine/{engine}/{suffix}"
        if suffix == bad:
            out.append(CheckResult.failed(name, "EngineChecksumMismatch", "sha256 differs", labels=labels))
        else:
            out.append(CheckResult.passed(name, labels=labels))
    return out


def served_by(server: MLServer, model: str) -> str:
    version, outputs = infer_version(server.url, model)
    assert np.allclose(outputs, GOLDEN, atol=1e-5), outputs
    return version


def condition(results: list[CheckResult], name: str) -> CheckResult:
    return next(r for r in results if r.name == name)


async def test_bad_new_version_is_rolled_back_then_released(mlserver: MLServer, tmp_path: Path) -> None:
    """Real engine files: version 1 verifies; version 2's file does not match its manifest's
    sha256 -> the server is pinned to 1 (index lists 1 only, inference answers 1); version 2
    fixed -> released (both listed, 2 answers)."""
    clock = SteppableClock()
    actions, announced, registry = make(mlserver, "rb", clock)
    m = write_engine(tmp_path, plan_bytes(1), name="rb", version="1")
    comp, sink = await started(
        config(EngineSpec("rb", manifest=m), tensorrt_version="10.13.0.35"),
        gpu_compute_capability=lambda: "9.0",
        gpu_free_memory_bytes=lambda: 80 << 30,
    )
    try:
        await sink.wait_for(lambda r: r.name == "engine/rb/change" and r.ok)
        actions.observe(r for _, r in sink.log)
        assert await actions.tick() and not actions.history
        assert index(mlserver.url, "rb") == ["1", "2"] and served_by(mlserver, "rb") == "2"
        mark = len(sink.log)
        write_engine(tmp_path, plan_bytes(2), name="rb", version="2", sha256="0" * 64)
        await sink.wait_for(
            lambda r: r.name == "engine/rb/checksum" and not r.ok and r.labels.get("version") == "2",
            within=10,
        )
        actions.observe(r for _, r in sink.log[mark:])
        results = await actions.tick()
        rec = actions.history[-1]
        assert (rec.kind, rec.target, rec.outcome) == ("rollback", "1", "ok"), rec
        assert "EngineChecksumMismatch" in rec.evidence and "parked rb version 2" in rec.calls
        assert index(mlserver.url, "rb") == ["1"] and served_by(mlserver, "rb") == "1"
        rb = condition(results, "actions/rb/rollback")
        assert rb.reason == "RolledBack" and rb.labels["pinned"] == "1" and rb.labels["version"] == "2"
        assert [t.reason for t in announced] == ["EngineRolledBack"]
        sample = {"engine": "rb", "action": "rollback", "outcome": "ok"}
        assert registry.get_sample_value("trt_health_actions_total", sample) == 1
        calls_ms = (rec.called_at - rec.started_at) * 1e3
        print(f"\nrollback: verdict->server state {rec.total_s * 1e3:.1f} ms (calls {calls_ms:.1f} ms)")
        # the same version fixed (its file now matches): released, 2 serves again
        mark = len(sink.log)
        write_engine(tmp_path, plan_bytes(2), name="rb", version="2")
        await sink.wait_for(
            lambda r: r.name == "engine/rb/checksum" and r.ok and r.labels.get("version") == "2", within=10
        )
        actions.observe(r for _, r in sink.log[mark:])
        await actions.tick()
        assert actions.history[-1].kind == "release" and actions.history[-1].outcome == "ok"
        assert index(mlserver.url, "rb") == ["1", "2"] and served_by(mlserver, "rb") == "2"
    finally:
        await comp.stop()
        await actions.stop()


async def test_gpu_fault_does_not_roll_back(mlserver: MLServer) -> None:
    """A fatal Xid while the new version fails: blamed on the GPU, no call is made and the
    server still serves 2; once the GPU is clean the engine fault stands and is rolled back."""
    clock = SteppableClock()
    actions, announced, _ = make(mlserver, "gpu", clock)
    try:
        actions.observe(engine_results("gpu", "1"))
        await actions.tick()
        xid = CheckResult.failed("gpu/GPU-1/xid", "XidFatal79", "fell off the bus", severity=Severity.FATAL)
        actions.observe([xid, *engine_results("gpu", "2", bad="checksum", sha="b" * 64)])
        results = await actions.tick()
        assert not actions.history and not announced
        assert condition(results, "actions/gpu/rollback").reason == "GpuFaultNoRollback"
        assert index(mlserver.url, "gpu") == ["1", "2"] and served_by(mlserver, "gpu") == "2"
        actions.observe([CheckResult.passed("gpu/GPU-1/xid", severity=Severity.FATAL)])
        await actions.tick()
        assert actions.history[-1].kind == "rollback" and actions.history[-1].outcome == "ok"
        assert index(mlserver.url, "gpu") == ["1"] and served_by(mlserver, "gpu") == "1"
    finally:
        await actions.stop()


async def test_flapping_pair_is_bounded(mlserver: MLServer) -> None:
    """Version 2 keeps changing, verifying and then failing its canary: two rollbacks within
    the window, the third is not made (RollbackFlapping, 2 stays served); past the window it
    acts again."""
    clock = SteppableClock()
    actions, _, _ = make(mlserver, "flap", clock)
    try:
        actions.observe(engine_results("flap", "1"))
        await actions.tick()
        mismatch = CheckResult.failed("canary/engine/flap", "CanaryMismatch", "off", severity=Severity.FATAL)
        for i in range(3):  # version 2 verifies by file, then its production canary fails
            passed = CheckResult.passed("canary/engine/flap")
            actions.observe([*engine_results("flap", "2", sha=f"{i}" * 64), passed])
            await actions.tick()
            actions.observe([mismatch])
            results = await actions.tick()
            clock.advance(60)
        kinds = [(r.kind, r.outcome) for r in actions.history]
        assert kinds == [("rollback", "ok"), ("release", "ok"), ("rollback", "ok"), ("release", "ok")]
        assert condition(results, "actions/flap/rollback").reason == "RollbackFlapping"
        assert index(mlserver.url, "flap") == ["1", "2"] and served_by(mlserver, "flap") == "2"
        clock.advance(3601)
        await actions.tick()
        assert actions.history[-1].kind == "rollback" and actions.history[-1].outcome == "ok"
        assert index(mlserver.url, "flap") == ["1"] and served_by(mlserver, "flap") == "1"
    finally:
        await actions.stop()


async def test_fallback_switched_to_and_back(mlserver: MLServer) -> None:
    """Memory headroom under the threshold for enter_after with a verified fallback (its own
    canary passed): the server is switched to the fallback (version 0), readiness stays
    SERVING, primary goes NOT_SERVING; back to 2 after restore_after without pressure."""
    clock = SteppableClock()
    engines = [{"engine": "fb", "model": "fb", "degrade": True}]
    degrade = {"enter_after": "30s", "restore_after": "60s", "min_free_mib": 1000}
    actions, announced, registry = make(mlserver, "fb", clock, engines=engines, degrade=degrade)
    policy = HealthPolicy()
    policy.set_started(True)

    transitions: list[Transition] = []

    def verdict(results: list[CheckResult]) -> tuple[bool, bool]:
        transitions.extend(policy.observe(results, clock()))
        v = policy.verdicts()
        return v[SERVICE_READINESS].serving, v[SERVICE_PRIMARY].serving

    low = CheckResult.passed("gpu/GPU-1/memory", value=100.0, severity=Severity.WARNING)
    high = CheckResult.passed("gpu/GPU-1/memory", value=50_000.0, severity=Severity.WARNING)
    primary = [
        CheckResult(r.name, r.status, r.severity, r.reason, r.message, {**r.labels, "fallback": "fb-fp16"})
        for r in engine_results("fb", "2")
    ]
    try:
        actions.observe([*primary, *engine_results("fb-fp16", "0"), high])
        assert verdict(await actions.tick()) == (True, True)
        actions.observe([low])
        await actions.tick()
        clock.advance(31)
        results = await actions.tick()  # the fallback's own canary has not passed: not usable
        assert condition(results, "degraded/fb").reason == "FallbackNotVerified" and not actions.history
        actions.observe([CheckResult.passed("canary/engine/fb-fp16")])
        results = await actions.tick()
        rec = actions.history[-1]
        assert (rec.kind, rec.target, rec.outcome) == ("degrade", "0", "ok"), rec
        assert index(mlserver.url, "fb") == ["0"] and served_by(mlserver, "fb") == "0"
        assert condition(results, "degraded/fb").reason == "ServingFallback"
        assert verdict(results) == (True, False)  # ready, but not at full capability
        assert registry.get_sample_value("trt_health_degraded", {"engine": "fb"}) == 1
        print(f"\ndegrade: pressure->fallback serving {rec.total_s:.1f} s (enter_after 30 s), calls "
              f"{(rec.verified_at - rec.started_at) * 1e3:.1f} ms")  # fmt: skip
        actions.observe([high])
        await actions.tick()
        clock.advance(30)
        actions.observe([low])  # back within the hysteresis window: stays on the fallback
        await actions.tick()
        actions.observe([high])
        await actions.tick()  # the pressure is gone from here
        clock.advance(59)
        assert verdict(await actions.tick()) == (True, False)
        clock.advance(2)
        results = await actions.tick()
        rec = actions.history[-1]
        assert (rec.kind, rec.outcome) == ("restore", "ok"), rec
        assert index(mlserver.url, "fb") == ["0", "2"] and served_by(mlserver, "fb") == "2"
        assert verdict(results) == (True, True)
        # the switches are the degraded/fb condition's own transitions (one Event each), not
        # announced a second time
        assert not announced
        changes = [(t.condition, t.healthy, t.reason) for t in transitions if t.condition == "degraded/fb"]
        assert changes[-2:] == [("degraded/fb", False, "ServingFallback"), ("degraded/fb", True, "")]
        print(f"restore: calls {(rec.verified_at - rec.started_at) * 1e3:.1f} ms")
    finally:
        await actions.stop()


async def test_dry_run_changes_nothing(mlserver: MLServer) -> None:
    """dry_run: the rollback is decided and reported once (log, metric, event, condition
    labels) but no call is made: nothing parked, both versions listed, 2 answers."""
    clock = SteppableClock()
    actions, announced, registry = make(mlserver, "dry", clock, dry_run=True)
    try:
        actions.observe(engine_results("dry", "1"))
        await actions.tick()
        actions.observe(engine_results("dry", "2", bad="checksum", sha="b" * 64))
        results = await actions.tick()
        await actions.tick()
        assert len(actions.history) == 1
        rec = actions.history[0]
        assert rec.outcome == "dry_run" and rec.calls.startswith("would: park every version of dry but 1")
        assert [t.reason for t in announced] == ["DryRunEngineRolledBack"]
        assert (
            registry.get_sample_value(
                "trt_health_actions_total", {"engine": "dry", "action": "rollback", "outcome": "dry_run"}
            )
            == 1
        )
        assert "dry run" in condition(results, "actions/dry/rollback").message
        assert not list((mlserver.root / "dry").rglob("*.parked-by-trt-health"))
        assert index(mlserver.url, "dry") == ["1", "2"] and served_by(mlserver, "dry") == "2"
    finally:
        await actions.stop()


async def test_a_restarted_sidecar_adopts_the_pin_it_left(mlserver: MLServer) -> None:
    """A sidecar that rolled back stops (the server stays pinned: version 2 parked); a new one,
    knowing nothing, adopts the pin from the repository and releases it once version 2,
    fixed, verifies: the server lists both again and 2 answers."""
    first, _, _ = make(mlserver, "adopt", SteppableClock())
    try:
        first.observe(engine_results("adopt", "1"))
        await first.tick()
        first.observe(engine_results("adopt", "2", bad="checksum", sha="b" * 64))
        await first.tick()
        assert index(mlserver.url, "adopt") == ["1"]
    finally:
        await first.stop()
    second, _, _ = make(mlserver, "adopt", SteppableClock())
    try:
        second.observe(engine_results("adopt", "2", sha="c" * 64))
        results = await second.tick()
        assert [(r.kind, r.outcome) for r in second.history] == [("release", "ok")]
        assert condition(results, "actions/adopt/rollback").reason == ""
        assert index(mlserver.url, "adopt") == ["1", "2"] and served_by(mlserver, "adopt") == "2"
    finally:
        await second.stop()


def _operator_load(server: MLServer, model: str, *, park: str | None) -> None:
    """What a rollout does by hand: version ``park`` hidden (or every version back), then load."""
    for p in (server.root / model).rglob("model-settings.json*"):
        hidden = p.name != "model-settings.json"
        want_hidden = park is not None and p.parent.name == f"v{park}"
        if hidden != want_hidden:
            p.rename(p.with_name("model-settings.json" + (".hidden-by-operator" if want_hidden else "")))
    httpx.post(f"{server.url}/v2/repository/models/{model}/load", timeout=10).raise_for_status()


async def test_latency_regression_of_the_new_version_rolls_back(mlserver: MLServer) -> None:
    """The real workload probe measures version 1, then version 2 after a rollout: 2 is over
    latency_ratio x slower on this GPU (it verifies by file) -> pinned back to 1."""
    clock = SteppableClock()
    actions, _, _ = make(mlserver, "slow", clock, rollback={"latency_ratio": 2.0, "latency_min_samples": 5})
    errors: list[str] = []
    wl_raw = {"enabled": True, "kind": "kserve-http", "url": mlserver.url, "model": "slow",
              "manifest": str(CANARY_DIR / "manifest.yaml"), "timeout": "5s"}  # fmt: skip
    workload = WorkloadComponent(
        parse_workload_config(Section(wl_raw, "workload", errors)), registry=CollectorRegistry()
    )
    assert errors == []

    async def probe_n(n: int) -> None:
        for _ in range(n):
            actions.observe(workload.results(await workload.probe_once()))

    try:
        _operator_load(mlserver, "slow", park="2")  # before the rollout: version 1 only
        actions.observe(engine_results("slow", "1"))
        await probe_n(5)
        await actions.tick()
        _operator_load(mlserver, "slow", park=None)  # the rollout: version 2 (newest) serves
        actions.observe(engine_results("slow", "2", sha="b" * 64))
        await actions.tick()
        assert not actions.history and served_by(mlserver, "slow") == "2"
        await probe_n(5)
        await actions.tick()
        rec = actions.history[-1]
        assert (rec.kind, rec.target, rec.outcome) == ("rollback", "1", "ok"), rec
        assert rec.evidence.startswith("LatencyRegression"), rec.evidence
        assert index(mlserver.url, "slow") == ["1"] and served_by(mlserver, "slow") == "1"
    finally:
        await workload.stop()
        await actions.stop()
