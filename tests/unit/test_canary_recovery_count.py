"""How many matching canaries bring readiness back after a CanaryMismatch and a GPU reset:
the number the README and docs/scenario.md state (issue #9 item 9)."""

from __future__ import annotations

from sidecar.canary.latch import MismatchLatch
from sidecar.core.policy import HealthPolicy, PolicyConfig
from sidecar.core.values import CheckResult, Severity


def _canary_result(latch: MismatchLatch) -> CheckResult:
    """The canary's verdict for a matching run (CanaryComponent._judge: a latched or still
    recovering mismatch keeps failing FATAL, else it passes)."""
    latch.passed()
    if latch.holds:
        return CheckResult.failed("canary", "CanaryMismatch", "recovering", severity=Severity.FATAL)
    return CheckResult.passed("canary", reason="CanaryPassed", severity=Severity.CRITICAL)


def test_readiness_returns_after_five_matching_canaries_with_the_defaults() -> None:
    """Defaults (recovery_passes 3, fatal_recovery_threshold 3): a mismatch stays through any
    number of matching canaries until a reset; after the reset, readiness is back on the 5th
    matching canary (the latch's 3rd pass is the policy's 1st)."""
    policy = HealthPolicy(PolicyConfig())
    policy.set_started(True)
    latch = MismatchLatch(recovery_passes=3)
    now = 0.0
    policy.observe([CheckResult.passed("canary", severity=Severity.CRITICAL)], now)
    latch.mismatch(generation=0, message="differs")
    now += 1
    policy.observe([CheckResult.failed("canary", "CanaryMismatch", "differs", severity=Severity.FATAL)], now)
    assert not policy.verdicts()["readiness"].serving
    for _ in range(10):  # mode back to ok, no reset: still NOT_SERVING
        latch.observe_generation(0)
        now += 1
        policy.observe([_canary_result(latch)], now)
        assert not policy.verdicts()["readiness"].serving
    latch.observe_generation(1)  # the GPU component saw a reset
    needed = 0
    while not policy.verdicts()["readiness"].serving:
        needed += 1
        now += 1
        policy.observe([_canary_result(latch)], now)
        assert needed < 20
    assert needed == 5
