"""Policy tables: sequences of results -> established state and service verdicts."""

from __future__ import annotations

import pytest

from sidecar.core.policy import HealthPolicy, PolicyConfig, Thresholds
from sidecar.core.values import CheckResult, Severity

OK = "ok"
FAIL = "fail"
FATAL = "fatal"
UNK = "unknown"
WARN = "warn"


def result(kind: str, name: str = "c", gates: frozenset[str] = frozenset({"readiness"})) -> CheckResult:
    if kind == OK:
        return CheckResult.passed(name, gates=gates)
    if kind == FAIL:
        return CheckResult.failed(name, "Broken", "it broke", gates=gates)
    if kind == FATAL:
        return CheckResult.failed(name, "XidFatal79", "fell off", severity=Severity.FATAL, gates=gates)
    if kind == WARN:
        return CheckResult.failed(name, "Hot", "warm", severity=Severity.WARNING, gates=gates)
    return CheckResult.unknown(name, "NvmlHung", "stuck", gates=gates)


def run(seq: list[str], th: Thresholds) -> list[bool | None]:
    policy = HealthPolicy(PolicyConfig(defaults=th))
    policy.set_started(True)
    out: list[bool | None] = []
    for i, kind in enumerate(seq):
        policy.observe([result(kind)], now=float(i))
        out.append(policy.verdicts()["readiness"].serving)
    return out


T11 = Thresholds(1, 1, 3)
T31 = Thresholds(3, 1, 3)
T32 = Thresholds(3, 2, 2)


@pytest.mark.parametrize(
    ("seq", "th", "expected"),
    [
        # first success establishes readiness; first failure drops it (defaults 1/1)
        ([OK, FAIL, OK], T11, [True, False, True]),
        # failure threshold 3: two blips do not flap, the third consecutive failure does
        ([OK, FAIL, FAIL, OK, FAIL, FAIL, FAIL], T31, [True, True, True, True, True, True, False]),
        # not yet established: failures below threshold still gate (fail closed at start)
        ([FAIL, FAIL], T31, [False, False]),
        # success threshold 2: recovery needs two passes in a row
        (
            [OK, OK, FAIL, FAIL, FAIL, OK, FAIL, OK, OK],
            T32,
            [False, True, True, True, False, False, False, False, True],
        ),
        # FATAL acts at once even with a failure threshold of 3 ...
        ([OK, FATAL], T31, [True, False]),
        # ... and recovery after a fatal episode needs fatal_recovery_threshold (3) passes
        ([OK, FATAL, OK, OK, OK], T31, [True, False, False, False, True]),
        # a failure in the middle of a recovery restarts the count
        ([FATAL, OK, OK, FAIL, OK, OK, OK], T11, [False, False, False, False, False, False, True]),
        # UNKNOWN counts as a failure (fail closed)
        ([OK, UNK, OK], T11, [True, False, True]),
        # WARNING never gates
        ([OK, WARN, WARN, WARN], T11, [True, True, True, True]),
    ],
)
def test_hysteresis_table(seq: list[str], th: Thresholds, expected: list[bool | None]) -> None:
    """Readiness follows the kubelet's threshold semantics plus fatal/recovery rules."""
    assert run(seq, th) == expected


def test_not_started_and_pending_checks_hold_readiness() -> None:
    """Readiness is NOT_SERVING with reason Starting until started and every check reported."""
    policy = HealthPolicy()
    v = policy.verdicts()
    assert not v["readiness"].serving and v["readiness"].reasons == ("Starting",)
    assert not v["startup"].serving
    policy.set_started(True)
    policy.expect(["gpu", "canary"])
    v = policy.verdicts()
    assert v["startup"].serving
    assert not v[""].serving
    assert v[""].reasons == ("canary: Starting", "gpu: Starting")
    policy.settle("gpu")
    policy.settle("canary")
    assert policy.verdicts()[""].serving


def test_gpu_fault_never_touches_startup_or_liveness() -> None:
    """A fatal GPU finding turns readiness and its layer off, never startup or liveness."""
    policy = HealthPolicy()
    policy.set_started(True)
    gates = frozenset({"readiness", "gpu", "gpu/GPU-1"})
    policy.observe([result(FATAL, "gpu/GPU-1/xid", gates), result(OK, "canary/run")], now=1.0)
    v = policy.verdicts()
    assert not v["readiness"].serving and not v[""].serving
    assert not v["gpu"].serving and not v["gpu/GPU-1"].serving
    assert v["startup"].serving and v["liveness"].serving and v["workload-liveness"].serving
    assert v["readiness"].reasons == ("gpu/GPU-1/xid: XidFatal79",)


def test_layer_service_without_readiness_gate() -> None:
    """A condition that gates only engine/<name> leaves readiness SERVING."""
    policy = HealthPolicy()
    policy.set_started(True)
    policy.observe([result(FAIL, "engine/m/checksum", frozenset({"engine/m"}))], now=0.0)
    v = policy.verdicts()
    assert v["readiness"].serving
    assert not v["engine/m"].serving


def test_transitions_are_reported_once_per_change() -> None:
    """Only changes of the established state produce transitions."""
    policy = HealthPolicy()
    seq = [OK, OK, FAIL, FAIL, OK]
    changes = []
    for i, kind in enumerate(seq):
        changes += [(t.healthy, t.previous) for t in policy.observe([result(kind)], now=float(i))]
    assert changes == [(True, None), (False, True), (True, False)]


def test_overrides_match_longest_prefix() -> None:
    """Per-condition thresholds are chosen by the longest matching prefix."""
    cfg = PolicyConfig(
        defaults=Thresholds(1, 1, 3),
        overrides={"gpu/": Thresholds(2, 1, 3), "gpu/GPU-1/thermal": Thresholds(5, 1, 3)},
    )
    assert cfg.thresholds_for("gpu/GPU-1/thermal").failure_threshold == 5
    assert cfg.thresholds_for("gpu/GPU-1/ecc").failure_threshold == 2
    assert cfg.thresholds_for("canary").failure_threshold == 1


def test_shutdown_turns_everything_off() -> None:
    """After SIGTERM every service reports NOT_SERVING with reason ShuttingDown."""
    policy = HealthPolicy()
    policy.set_started(True)
    policy.set_shutting_down()
    assert all(not v.serving for v in policy.verdicts().values())


def test_liveness_follows_heartbeat() -> None:
    """Liveness reflects only the sidecar's own loops."""
    policy = HealthPolicy()
    policy.set_started(True)
    policy.set_liveness(False, "SchedulerStalled")
    v = policy.verdicts()
    assert not v["liveness"].serving and v["liveness"].reasons == ("SchedulerStalled",)
