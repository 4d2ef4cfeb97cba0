"""The pure decision logic of the actions package: blame, rollback, degrade (driven clocks)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sidecar.actions.config import DegradeSettings, RollbackSettings
from sidecar.actions.degrade import DegradeMachine
from sidecar.actions.evidence import UNPARSED, EngineEvidence, EvidenceBook
from sidecar.actions.rollback import DEGRADE, RELEASE, RESTORE, ROLLBACK, RollbackMachine
from sidecar.core.values import CheckResult, Severity


def ev(
    version: str, *, ok: bool = True, sha: str = "", fault: str = "engine/m/checksum: EngineChecksumMismatch"
) -> EngineEvidence:
    return EngineEvidence(
        engine="m",
        version=version,
        fingerprint=f"{version}@{sha}",
        verified=ok,
        fault=None if ok else fault,
        detail="" if ok else "sha256 differs",
    )


def engine_results(version: str, *, bad: str | None = None, sha: str = "a" * 64) -> list[CheckResult]:
    labels = {"engine": "m", "version": version, "sha256": sha, "fallback": "m-fp16"}
    out = []
    for suffix in ("manifest", "file", "checksum", "plan", "version", "arch"):
        name = f"engine/m/{suffix}"
        if suffix == bad:
            out.append(CheckResult.failed(name, "Bad", "bad", labels=labels))
        else:
            out.append(CheckResult.passed(name, labels=labels))
    return out


# -- blame ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "gpu_fault"),
    [
        (CheckResult.failed("gpu/GPU-1/xid", "XidFatal79", "fell off", severity=Severity.FATAL), True),
        (CheckResult.failed("gpu/GPU-1/ecc", "EccUncorrectable", "dbe", severity=Severity.FATAL), True),
        (CheckResult.failed("gpu/GPU-1/lost", "GpuLost", "lost", severity=Severity.FATAL), True),
        (CheckResult.failed("canary", "SilentDataCorruption", "sdc", severity=Severity.FATAL), True),
        (CheckResult.failed("canary", "CanaryMismatch", "wrong", severity=Severity.FATAL), True),
        (CheckResult.failed("gpu/GPU-1/thermal", "ThermalSlowdown", "hot", severity=Severity.WARNING), False),
        (CheckResult.failed("gpu/GPU-1/trend/ecc", "EccRateRising", "r", severity=Severity.CRITICAL), False),
        (CheckResult.unknown("gpu/GPU-1/ecc", "Starting", "not yet"), False),
        (
            CheckResult.failed("canary/engine/m", "CanaryMismatch", "prod wrong", severity=Severity.FATAL),
            False,
        ),
        (CheckResult.failed("engine/m/checksum", "EngineChecksumMismatch", "x"), False),
    ],
)
def test_blame_gpu_fault_table(result: CheckResult, gpu_fault: bool) -> None:
    book = EvidenceBook()
    book.add([result])
    assert (book.gpu_fault() is not None) is gpu_fault


def test_engine_evidence_from_results() -> None:
    book = EvidenceBook()
    book.add(engine_results("2"))
    e = book.engine("m")
    assert (e.version, e.verified, e.fault, e.fallback) == ("2", True, None, "m-fp16")
    book.add(engine_results("3", bad="arch", sha="b" * 64))
    e = book.engine("m")
    assert e.version == "3" and not e.verified and e.fault == "engine/m/arch: Bad"
    assert e.fingerprint == "3@" + "b" * 64
    book.add(engine_results("3", sha="b" * 64))
    book.add([CheckResult.failed("canary/engine/m", "CanaryMismatch", "off by 1", severity=Severity.FATAL)])
    e = book.engine("m")
    assert e.fault == "canary/engine/m: CanaryMismatch" and not e.verified
    # an unknown (still loading) verification is neither a fault nor verified
    book.add([CheckResult.passed("canary/engine/m")])
    book.add([CheckResult.unknown("engine/m/checksum", "LoadingEngine", "not yet", labels={"version": "3"})])
    e = book.engine("m")
    assert e.fault is None and not e.verified and e.canary_passed


def test_unparsed_manifest_is_not_the_old_version() -> None:
    """The results of a manifest that no longer parses carry the last good manifest's labels:
    the failure must not be charged to that (good) version."""
    book = EvidenceBook()
    book.add(engine_results("2", bad="manifest"))
    assert book.engine("m").version == UNPARSED


@pytest.mark.parametrize(
    ("results", "expect"),
    [
        ([CheckResult.passed("gpu/G/memory", value=100.0, severity=Severity.WARNING)], "gpu/G/memory"),
        ([CheckResult.passed("gpu/G/memory", value=5000.0, severity=Severity.WARNING)], None),
        ([CheckResult.failed("canary/latency", "CanaryLatencyOverBudget", "slow")], "canary/latency"),
        ([CheckResult.failed("gpu/G/thermal", "ClocksHwSlowdown", "x", severity=Severity.WARNING)], "gpu/G"),
        (
            [
                CheckResult.failed(
                    "trends/canary-latency", "LatencyDrift", "x", labels={"cause": "power_throttle"}
                )
            ],
            "trends",
        ),
        (
            [CheckResult.failed("trends/canary-latency", "LatencyDrift", "x", labels={"cause": "host_slow"})],
            None,
        ),
    ],
)
def test_pressure_table(results: Sequence[CheckResult], expect: str | None) -> None:
    book = EvidenceBook()
    book.add(results)
    got = book.pressure(min_free_mib=1000, canary_latency=True, throttling=True)
    assert (got is None) if expect is None else (got is not None and got.startswith(expect))


# -- rollback ---------------------------------------------------------------------------------

S = RollbackSettings(
    backoff_initial_s=10, backoff_max_s=40, max_attempts=3, flap_window_s=100, max_rollbacks=2
)


def test_bad_new_version_rolls_back_then_releases_when_fixed() -> None:
    m = RollbackMachine("m", S)
    m.update(ev("1"), None)
    assert m.decide(0) is None  # verified: nothing to do
    m.update(ev("2", ok=False), None)
    d = m.decide(1)
    assert d is not None and (d.kind, d.target, d.previous) == (ROLLBACK, "1", "2")
    m.done(d, True, 1)
    assert m.pinned == "1" and m.status()[0] == "RolledBack"
    assert m.decide(2) is None  # done: no second call
    m.update(ev("2", ok=False), None)
    assert m.decide(3) is None
    # the same version, changed (new sha), verifies: released to it
    m.update(ev("2", sha="new"), None)
    d = m.decide(4)
    assert d is not None and (d.kind, d.target) == (RELEASE, None)
    m.done(d, True, 4)
    assert m.pinned is None and m.status()[0] == ""


def test_gpu_fault_never_rolls_back_nor_marks_the_version() -> None:
    m = RollbackMachine("m", S)
    m.update(ev("1"), None)
    m.update(ev("2", ok=False), "gpu/GPU-1/xid: XidFatal79")
    assert m.decide(1) is None
    assert "2" not in m.failed
    # the GPU recovers and version 2 verifies: it was never the engine's fault
    m.update(ev("2"), None)
    assert m.decide(2) is None and m.good == "2"


def test_a_verified_engine_failing_unchanged_is_not_a_bad_new_version() -> None:
    """The plan of version 1 replaced before its manifest (a rollout that is not atomic): the
    unchanged version 1 fails its checksum. It verified here: it is not blamed, nothing is
    rolled back, and version 2, once it arrives bad, is rolled back to 1."""
    m = RollbackMachine("m", S)
    m.update(ev("1"), None)
    m.update(ev("1", ok=False), None)
    assert "1" not in m.failed and m.decide(0) is None and m.good == "1"
    # its canary failing is another matter: that is the engine's content
    m2 = RollbackMachine("m", S)
    m2.update(ev("1"), None)
    m2.update(ev("2"), None)
    m2.update(ev("2", ok=False, fault="canary/engine/m: CanaryMismatch"), None)
    d2 = m2.decide(0)
    assert d2 is not None and (d2.kind, d2.target) == (ROLLBACK, "1")
    m.update(ev("2", ok=False, sha="b"), None)
    d = m.decide(1)
    assert d is not None and (d.kind, d.target) == (ROLLBACK, "1")


def test_failed_version_not_retried_until_it_changes() -> None:
    m = RollbackMachine("m", S)
    m.update(ev("1"), None)
    m.update(ev("2", ok=False), None)
    d = m.decide(0)
    assert d is not None
    m.done(d, True, 0)
    # the failed version passing a later check without changing is still not served
    m.update(ev("2"), None)
    assert m.good == "1" and m.decide(1) is None


@pytest.mark.parametrize(
    ("fail_times", "expect_calls", "expect_status"),
    [(1, [0, 10], "RolledBack"), (2, [0, 10, 30], "RolledBack"), (3, [0, 10, 30], "RollbackGaveUp")],
)
def test_backoff_then_give_up(fail_times: int, expect_calls: list[int], expect_status: str) -> None:
    m = RollbackMachine("m", S)
    m.update(ev("1"), None)
    m.update(ev("2", ok=False), None)
    calls = []
    for now in range(0, 200):
        d = m.decide(now)
        if d is None:
            continue
        calls.append(now)
        m.done(d, len(calls) > fail_times, now)
    assert calls == expect_calls
    assert m.status()[0] == expect_status
    if expect_status == "RollbackGaveUp":  # a new engine on the volume: it may act again
        m.update(ev("3", ok=False), None)
        assert m.decide(500) is not None


def test_flapping_pair_is_bounded() -> None:
    m = RollbackMachine("m", S)
    m.update(ev("1"), None)
    rollbacks = 0
    mismatch = "canary/engine/m: CanaryMismatch"
    for i in range(6):  # a new version 2 keeps arriving, verifying, then its canary failing
        m.update(ev("2", sha=f"s{i}"), None)
        d = m.decide(i * 10)
        if d is not None:
            assert d.kind == RELEASE
            m.done(d, True, i * 10)
        m.update(ev("2", ok=False, sha=f"s{i}", fault=mismatch), None)
        d = m.decide(i * 10 + 1)
        if d is not None:
            assert d.kind == ROLLBACK
            rollbacks += 1
            m.done(d, True, i * 10 + 1)
    assert rollbacks == 2 and m.status()[0] == "RollbackFlapping"
    m.update(ev("2", ok=False, sha="late", fault=mismatch), None)
    assert m.decide(150) is not None  # the window passed since the last rollback


def test_latency_regression_fails_the_new_version() -> None:
    s = RollbackSettings(latency_ratio=1.5, latency_min_samples=3)
    m = RollbackMachine("m", s)
    m.update(ev("1"), None)
    for _ in range(3):
        m.latency_sample(0.010)
    m.update(ev("2"), None)
    for _ in range(3):
        m.latency_sample(0.012)  # 1.2x: fine
    assert "2" not in m.failed
    for _ in range(5):
        m.latency_sample(0.030)
    assert "LatencyRegression" in m.failed["2"][1]
    d = m.decide(0)
    assert d is not None and (d.kind, d.target) == (ROLLBACK, "1")


# -- degrade ----------------------------------------------------------------------------------

D = DegradeSettings(enter_after_s=30, restore_after_s=60)


def test_degrade_hysteresis_table() -> None:
    m = DegradeMachine("m", D, S)
    timeline: list[tuple[float, str | None]] = [
        (0, "low memory"),
        (20, None),  # a break: the enter window starts again
        (25, "low memory"),
        (50, "low memory"),
        (56, "low memory"),  # 31 s sustained -> degrade
        (80, None),
        (120, "low memory"),  # back before the restore window: stays degraded
        (130, None),
        (189, None),
        (191, None),  # 61 s clear -> restore
    ]
    actions = []
    for now, pressure in timeline:
        m.update(pressure, True, "ok", now)
        d = m.decide(now, "fp16")
        if d is not None:
            actions.append((now, d.kind))
            m.done(d, True, now)
    assert actions == [(56, DEGRADE), (191, RESTORE)]


def test_degrade_needs_a_verified_fallback() -> None:
    m = DegradeMachine("m", D, S)
    m.update("low memory", False, "fallback m-fp16 not verified", 0)
    assert m.decide(100, "fp16") is None
    assert m.status(100)[0] == "FallbackNotVerified"
    m.update("low memory", True, "ok", 101)
    d = m.decide(101, "fp16")
    assert d is not None and d.kind == DEGRADE and d.target == "fp16"
