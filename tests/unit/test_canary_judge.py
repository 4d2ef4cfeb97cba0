"""The canary judge as tables: worker outcomes, goldens and the time in, check results and
the effects they ask for out (no worker process, no files, no clock: ``now`` is given)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sidecar.canary import sdc
from sidecar.canary.config import CanaryConfig, ProductionEngineConfig
from sidecar.canary.golden_store import Golden, ProductionGolden
from sidecar.canary.judge import CanaryJudge, Judgement
from sidecar.canary.outcome import Death, RunOutcome
from sidecar.canary.protocol import WorkerError
from sidecar.canary.sdc_screen import Judged
from sidecar.canary.verdicts import WorkerView
from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.engine.manifest import EngineManifest, Tolerance

MIB = 1 << 20
GOLDEN = Golden(
    {"y": np.array([1.0, 2.0, 3.0], np.float32)},
    Tolerance(atol=0.01, rtol=0.0),
    50.0,
    engine_sha256="e" * 64,
    input_sha256="i" * 16,
)
WORKER = WorkerView(runner="onnxruntime", detail="onnxruntime CPU", rss_baseline=100 * MIB)


def ok(y: list[float], *, latency_s: float = 0.001, rss_mib: int = 100, **kw: Any) -> RunOutcome:
    return RunOutcome(
        True,
        runner="onnxruntime",
        outputs={"y": np.array(y, np.float32)},
        latency_s=latency_s,
        rss_bytes=rss_mib * MIB,
        **kw,
    )


def main(j: Judgement) -> CheckResult:
    return next(r for r in j.results if r.name == "canary")


def by_name(j: Judgement, name: str) -> CheckResult:
    return next(r for r in j.results if r.name == name)


def judge(**cfg: Any) -> CanaryJudge:
    return CanaryJudge(CanaryConfig(**cfg))


# --- before the worker runs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("worker", "reason", "status", "message_end"),
    [
        (WorkerView(), "Starting", CheckStatus.UNKNOWN, "canary worker starting"),
        (WorkerView(loading=True), "LoadingEngine", CheckStatus.UNKNOWN, "loading runner auto"),
        (
            WorkerView(
                last_death=Death("SIGKILL", "WorkerCrashed", "worker killed by SIGKILL"),
                backoff_remaining_s=2.5,
            ),
            "WorkerCrashed",
            CheckStatus.FAIL,
            "worker killed by SIGKILL; restarting in 2.5s",
        ),
        (
            WorkerView(last_death=Death("LoadTimeout", "LoadTimeout", "load did not answer")),
            "LoadTimeout",
            CheckStatus.FAIL,
            "load did not answer; restarting",
        ),
    ],
)
def test_no_loaded_worker_says_why(
    worker: WorkerView, reason: str, status: CheckStatus, message_end: str
) -> None:
    """Without a loaded worker the round ends at once: starting, loading, or its last death
    and the backoff left; counted as not_ready."""
    j = judge().before_run(0, ready=False, worker=worker)
    assert j is not None and j.final and j.outcome == "not_ready"
    r = main(j)
    assert (r.reason, r.status) == (reason, status) and r.message.endswith(message_end)
    if worker.last_death is not None:
        assert r.labels["cause"] == worker.last_death.cause


def test_ready_worker_goes_on_and_a_latched_finding_stops_first() -> None:
    """A ready worker runs (None); a latched mismatch answers FATAL before anything else."""
    j = judge()
    assert j.before_run(0, ready=True, worker=WORKER) is None
    j.latch.mismatch(0, "wrong")
    early = j.before_run(0, ready=True, worker=WORKER)
    assert early is not None and early.outcome is None
    assert main(early).reason == "CanaryMismatch" and main(early).severity is Severity.FATAL


@pytest.mark.parametrize(
    ("busy", "last_pass_at", "now", "held", "skipped"),
    [
        (False, 100.0, 100.5, False, False),  # not busy: run
        (True, None, 100.5, False, False),  # busy, never passed: run (nothing to lean on)
        (True, 100.0, 100.5, False, True),  # busy, passed 0.5 s ago: skip
        (True, 100.0, 100.999, False, True),  # just inside max_skip
        (True, 100.0, 101.0, False, False),  # max_skip reached: run anyway
        (True, 100.0, 100.5, True, False),  # a finding holds: never skipped
    ],
)
def test_busy_gpu_skips_within_max_skip(
    busy: bool, last_pass_at: float | None, now: float, held: bool, skipped: bool
) -> None:
    """A busy GPU skips the canary (OK CanarySkipped) for up to max_skip after the last pass."""
    j = judge(max_skip_s=1.0)
    j.last_pass_at = last_pass_at
    if held:
        j.latch.mismatch(0, "wrong")
    got = j.skip(now=now, busy=busy, runner="onnxruntime")
    assert (got is not None) == skipped
    if got is not None:
        assert got.outcome == "skipped" and main(got).reason == "CanarySkipped" and main(got).ok
        assert "last pass 0.5s ago" in main(got).message or now != 100.5


def test_exclusive_process_mode_is_unmonitored_info() -> None:
    """EXCLUSIVE_PROCESS: OK at INFO, counted unmonitored."""
    got = judge().exclusive()
    assert got.outcome == "unmonitored" and main(got).reason == "ExclusiveProcessMode"
    assert main(got).ok and main(got).severity is Severity.INFO


# --- a round the worker did not answer -------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "reason", "kind", "labels"),
    [
        (
            RunOutcome(
                False, runner="onnxruntime", death=Death("CanaryTimeout", "CanaryTimeout", "no answer")
            ),
            "CanaryTimeout",
            "timeout",
            {"cause": "CanaryTimeout", "runner": "onnxruntime"},
        ),
        (
            RunOutcome(
                False,
                runner="cuda-kernel",
                death=Death("SIGSEGV", "WorkerCrashed", "killed", {"exit": "SIGSEGV"}),
            ),
            "WorkerCrashed",
            "crashed",
            {"cause": "SIGSEGV", "runner": "cuda-kernel", "exit": "SIGSEGV"},
        ),
        (
            RunOutcome(
                False,
                runner="cuda-kernel",
                error=WorkerError("CudaError", "illegal address", cuda_error="CUDA_ERROR_ILLEGAL_ADDRESS"),
                death=Death("CUDA_ERROR_ILLEGAL_ADDRESS", "CudaError", "illegal address; worker replaced"),
            ),
            "CudaError",
            "error",
            {
                "cause": "CUDA_ERROR_ILLEGAL_ADDRESS",
                "runner": "cuda-kernel",
                "cuda_error": "CUDA_ERROR_ILLEGAL_ADDRESS",
            },
        ),
        (
            RunOutcome(False, runner="onnxruntime", error=WorkerError("WorkerProtocolError", "bad outputs")),
            "WorkerProtocolError",
            "error",
            {"runner": "onnxruntime"},
        ),
    ],
)
def test_failed_round_reason_metric_and_labels(
    outcome: RunOutcome, reason: str, kind: str, labels: dict[str, str]
) -> None:
    """Timeouts, crashes and errors fail CRITICAL with their reason, cause labels and the
    results_total outcome (timeout / crashed / error)."""
    got = judge().run_failed(outcome, outcome.runner)
    r = main(got)
    assert got.outcome == kind and got.final
    assert (r.reason, r.status, r.severity, r.labels) == (reason, CheckStatus.FAIL, Severity.CRITICAL, labels)


def test_failed_round_while_recovering_keeps_the_finding_and_restarts_the_count() -> None:
    """A timeout during recovery stays FATAL (naming the failure) and the passes start over."""
    j = judge(recovery_passes=3)
    j.latch.mismatch(0, "wrong")
    j.latch.observe_generation(1)
    j.latch.passed()
    timeout = RunOutcome(
        False, runner="onnxruntime", death=Death("CanaryTimeout", "CanaryTimeout", "no answer")
    )
    got = j.run_failed(timeout, "onnxruntime")
    assert got.outcome == "timeout" and main(got).severity is Severity.FATAL
    assert "last round failed: CanaryTimeout" in main(got).message and j.latch.passes == 0


# --- golden rounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("y", "latency_s", "cfg", "reason", "latency_reason", "latency_severity"),
    [
        ([1.0, 2.0, 3.0], 0.001, {}, "CanaryPassed", "", Severity.WARNING),
        ([1.0, 2.0, 3.005], 0.001, {}, "CanaryPassed", "", Severity.WARNING),  # within atol
        ([1.0, 2.0, 3.0], 0.060, {}, "CanaryPassed", "CanaryLatencyOverBudget", Severity.WARNING),
        ([1.0, 2.0, 3.0], 0.060, {"latency_budget_ms": 100.0}, "CanaryPassed", "", Severity.WARNING),
        (
            [1.0, 2.0, 3.0],
            0.060,
            {"latency_gates_readiness": True},
            "CanaryPassed",
            "CanaryLatencyOverBudget",
            Severity.CRITICAL,
        ),
        ([1.0, 2.0, 3.5], 0.001, {}, "CanaryMismatch", None, None),  # no latency result then
        ([1.0, 2.0, float("nan")], 0.001, {}, "CanaryMismatch", None, None),
    ],
)
def test_golden_round_table(
    y: list[float],
    latency_s: float,
    cfg: dict[str, Any],
    reason: str,
    latency_reason: str | None,
    latency_severity: Severity | None,
) -> None:
    """Matching within tolerance passes (CRITICAL gate) with a digest; a miss or a NaN is a
    FATAL CanaryMismatch that clears the digests; latency against the golden's budget (or
    the config's), WARNING unless latency_gates_readiness."""
    j = judge(**cfg)
    got = j.golden_round(ok(y, latency_s=latency_s), GOLDEN, 0, now=42.0, worker=WORKER, identity={})
    r = main(got)
    assert r.reason == reason
    if reason == "CanaryPassed":
        assert got.outcome == "pass" and r.severity is Severity.CRITICAL and got.digest is not None
        assert r.labels["digest"] == got.digest[1] and r.labels["engine_sha256"] == "e" * 64
        assert j.last_pass_at == 42.0 and j.passes == 1 and not got.clear_digests
    else:
        assert got.outcome == "mismatch" and r.severity is Severity.FATAL and got.clear_digests
        assert got.digest is None and j.latch.latched and j.last_pass_at is None
    names = [x.name for x in got.results]
    if latency_reason is None:
        assert "canary/latency" not in names
    else:
        lat = by_name(got, "canary/latency")
        assert lat.reason == latency_reason and lat.severity is latency_severity


def test_max_abs_error_reported_only_when_finite() -> None:
    """The max-abs-error gauge gets finite values only (a NaN output leaves it alone)."""
    j = judge()
    close = j.golden_round(ok([1.0, 2.0, 3.005]), GOLDEN, 0, now=1.0, worker=WORKER, identity={})
    assert close.max_abs_error == pytest.approx(0.005, abs=1e-6)
    nan = j.golden_round(ok([1.0, 2.0, float("nan")]), GOLDEN, 0, now=2.0, worker=WORKER, identity={})
    assert nan.max_abs_error is None


def test_mismatch_holds_until_reset_then_recovery_passes() -> None:
    """A mismatch stays FATAL through matching rounds until the reset generation changes;
    then recovery_passes matching rounds clear it (the messages count them)."""
    j = judge(recovery_passes=2)
    rows: list[tuple[list[float], int, str, str]] = [
        ([9.0, 9.0, 9.0], 0, "CanaryMismatch", "sticky until a GPU reset"),
        ([1.0, 2.0, 3.0], 0, "CanaryMismatch", "sticky until a GPU reset"),  # no reset yet
        ([1.0, 2.0, 3.0], 1, "CanaryMismatch", "recovering: 1/2"),  # reset seen
        ([1.0, 2.0, 3.0], 1, "CanaryPassed", ""),
    ]
    for now, (y, generation, reason, text) in enumerate(rows):
        assert j.before_run(generation, ready=True, worker=WORKER) is None or reason == "CanaryMismatch"
        got = j.golden_round(ok(y), GOLDEN, generation, now=float(now), worker=WORKER, identity={})
        assert main(got).reason == reason and text in main(got).message


@pytest.mark.parametrize(
    ("det", "reason", "status"),
    [
        (None, None, None),
        ({"bitwise": True, "manifest_sha256": "a" * 64, "engine_sha256": "a" * 64}, "", CheckStatus.OK),
        (
            {"bitwise": False, "max_abs_diff": 1e-7, "within_tolerance": True},
            "CanaryNondeterministic",
            CheckStatus.FAIL,
        ),
        ({"manifest_sha256": "a" * 64, "engine_sha256": "b" * 64}, "GoldenEngineMismatch", CheckStatus.FAIL),
    ],
)
def test_determinism_self_test(
    det: dict[str, Any] | None, reason: str | None, status: CheckStatus | None
) -> None:
    """The worker's load-time self-test becomes canary/determinism (absent when not run)."""
    worker = dataclasses.replace(WORKER, determinism=det)
    got = judge().golden_round(ok([1.0, 2.0, 3.0]), GOLDEN, 0, now=1.0, worker=worker, identity={})
    found = [r for r in got.results if r.name == "canary/determinism"]
    if reason is None:
        assert found == []
    else:
        assert (found[0].reason, found[0].status) == (reason, status)


@pytest.mark.parametrize(
    ("rss_mib", "reason", "replaced"),
    [
        (150, "", False),
        (100 + 257, "WorkerMemoryGrowth", False),
        (4097, "WorkerMemoryLimit", True),
    ],
)
def test_worker_memory(rss_mib: int, reason: str, replaced: bool) -> None:
    """RSS growth since the first answer warns; over the limit the worker is replaced."""
    got = judge().memory(ok([1.0], rss_mib=rss_mib), WORKER)
    r = by_name(got, "canary/worker-memory")
    assert r.reason == reason and r.severity is Severity.WARNING
    assert (got.replace_worker is not None) == replaced
    if replaced:
        assert got.replace_worker is not None and "over limit 4096 MiB" in got.replace_worker


# --- tensor-core rounds ----------------------------------------------------------------------


def _verdict(
    uuid: str, *, covered: int = 4, sms: int = 4, bad: int = 0, problem: str = ""
) -> sdc.DeviceVerdict:
    return sdc.DeviceVerdict(
        0,
        uuid,
        sdc.RoundMeta(7, 1, 1, sms, 8),
        covered,
        mismatch_count=bad,
        bad_sms=[2] if bad else [],
        problem=problem,
    )


def _judged(*verdicts: sdc.DeviceVerdict, problems: tuple[str, ...] = ()) -> Judged:
    ok_ones = [x for x in verdicts if not x.problem]
    return Judged(list(verdicts), corrupt=[x for x in ok_ones if x.corrupt], problems=list(problems))


TC = RunOutcome(True, runner="tensor-core", latency_s=0.002)
TC_WORKER = WorkerView(runner="tensor-core")


@pytest.mark.parametrize(
    ("judged", "reason", "outcome", "coverage"),
    [
        (_judged(_verdict("GPU-a")), "CanaryPassed", "pass", ""),
        (_judged(_verdict("GPU-a", covered=3)), "CanaryPassed", "pass", "SdcCoverageIncomplete"),
        (_judged(_verdict("GPU-a", bad=5)), "SilentDataCorruption", "mismatch", ""),
        (
            _judged(problems=("GPU-a: round 1 does not advance past 1",)),
            "TensorCoreRoundInvalid",
            "error",
            "NoValidRound",
        ),
    ],
)
def test_sdc_round_table(judged: Judged, reason: str, outcome: str, coverage: str) -> None:
    """Bit-exact rounds pass; a differing element is FATAL SilentDataCorruption (persisted);
    an invalid round fails closed without calling it SDC; coverage says which SMs ran."""
    j = CanaryJudge(CanaryConfig(), sdc_persisted=True)
    got = j.sdc_round(TC, judged, 0, now=5.0, worker=TC_WORKER)
    assert main(got).reason == reason and got.outcome == outcome and not got.final
    assert (got.persist_sdc is judged) == (reason == "SilentDataCorruption")
    assert by_name(got, "canary/sdc-coverage").reason == coverage
    if reason == "SilentDataCorruption":
        assert main(got).severity is Severity.FATAL and "persisted across restarts" in main(got).message
        assert j.latch_reason == "SilentDataCorruption"


def test_sdc_finding_clears_only_through_tensor_core_rounds_after_a_reset() -> None:
    """An SDC finding: other runners' passes do not count; after a reset, recovery_passes
    bit-exact rounds clear it and ask for the persisted latch to be dropped."""
    j = CanaryJudge(CanaryConfig(recovery_passes=2))
    j.sdc_round(TC, _judged(_verdict("GPU-a", bad=1)), 0, now=1.0, worker=TC_WORKER)
    held = j.sdc_holds(ok([1.0, 2.0, 3.0]), "onnxruntime")
    assert held is not None and "only runner tensor-core rounds can clear it" in main(held).message
    assert j.before_run(1, ready=True, worker=TC_WORKER) is None  # the reset
    first = j.sdc_round(TC, _judged(_verdict("GPU-a")), 1, now=2.0, worker=TC_WORKER)
    assert "recovering: 1/2" in main(first).message and not first.clear_sdc
    invalid = j.sdc_round(TC, _judged(problems=("bad round",)), 1, now=3.0, worker=TC_WORKER)
    assert invalid.final and main(invalid).reason == "SilentDataCorruption" and j.latch.passes == 0
    j.sdc_round(TC, _judged(_verdict("GPU-a")), 1, now=4.0, worker=TC_WORKER)
    cleared = j.sdc_round(TC, _judged(_verdict("GPU-a")), 1, now=5.0, worker=TC_WORKER)
    assert main(cleared).reason == "CanaryPassed" and cleared.clear_sdc and j.latch_reason == "CanaryMismatch"
    assert j.last_pass_at == 5.0


def test_restored_sdc_finding_holds_and_after_a_reboot_recovers() -> None:
    """A persisted SDC finding holds after a restart (FATAL before the worker runs); after a
    reboot (a reset) it is recovering and passing tensor-core rounds count."""
    held = CanaryJudge(CanaryConfig())
    held.restore_sdc("GPU-a: 3 elements differ", rebooted=False)
    early = held.before_run(0, ready=True, worker=TC_WORKER)
    assert early is not None and main(early).reason == "SilentDataCorruption"
    assert "persisted in the state directory" in main(early).message
    rebooted = CanaryJudge(CanaryConfig())
    rebooted.restore_sdc("GPU-a: 3 elements differ", rebooted=True)
    assert rebooted.before_run(0, ready=True, worker=TC_WORKER) is None
    got = rebooted.sdc_round(TC, _judged(_verdict("GPU-a")), 0, now=1.0, worker=TC_WORKER)
    assert main(got).reason == "SilentDataCorruption" and "recovering: 1/3" in main(got).message


def test_take_over_sdc_beats_a_plain_mismatch() -> None:
    """A reload's replacement takes the old SDC finding over its own plain mismatch."""
    old = CanaryJudge(CanaryConfig())
    old.sdc_round(TC, _judged(_verdict("GPU-a", bad=1)), 0, now=1.0, worker=TC_WORKER)
    new = CanaryJudge(CanaryConfig())
    new.latch.mismatch(0, "plain")
    now = new.take_over(old, "tensor-core")
    assert [r.reason for r in now] == ["SilentDataCorruption"] and new.latch_reason == "SilentDataCorruption"
    assert new.take_over(CanaryJudge(CanaryConfig()), "tensor-core") == []  # nothing more to take


# --- the production engine -------------------------------------------------------------------


def _production(tmp_path: Path, release: bool) -> tuple[CanaryJudge, ProductionGolden]:
    cfg = CanaryConfig(production_engine=ProductionEngineConfig(tmp_path / "prod.yaml", 512.0, release))
    m = EngineManifest(
        name="prod", file="prod.plan", directory=tmp_path, tolerance=Tolerance(atol=0.0, rtol=0.0)
    )
    return CanaryJudge(cfg), ProductionGolden(m, {"out": np.array([1.0, 2.0], np.float32)})


@pytest.mark.parametrize(
    ("outputs", "release", "reasons", "asks_release"),
    [
        (None, False, ["LoadingEngine"], False),
        ([1.0, 2.0], False, ["CanaryPassed", "CanaryPassed"], False),
        ([1.0, 2.0], True, ["CanaryPassed", "VerifiedAndReleased"], True),
        ([1.0, 2.5], False, ["CanaryMismatch", "CanaryMismatch"], False),
    ],
)
def test_production_engine_rounds(
    tmp_path: Path, outputs: list[float] | None, release: bool, reasons: list[str], asks_release: bool
) -> None:
    """Two rounds of the production engine: not loaded, verified (released after a verify
    when configured), or a sticky FATAL mismatch on canary/engine/<name>."""
    j, found = _production(tmp_path, release)
    seen: list[str] = []
    released = False
    for _ in reasons[: 1 if outputs is None else 2]:
        prod = None if outputs is None or released else {"out": np.array(outputs, np.float32)}
        got = j.production_round(dataclasses.replace(ok([1.0]), production_outputs=prod), found, 0)
        (r,) = got.results
        assert r.name == "canary/engine/prod" and "engine/prod" in r.gates
        seen.append(r.reason)
        released = released or got.release_production
    assert seen == reasons and released == asks_release
    if reasons[0] == "CanaryMismatch":
        assert j.production_failed is not None and j.production_failed.severity is Severity.FATAL


def test_production_manifest_unreadable_names_the_file_stem(tmp_path: Path) -> None:
    j, _ = _production(tmp_path, False)
    (r,) = j.production_unreadable(ValueError("broken")).results
    assert (r.name, r.reason, r.message) == ("canary/engine/prod", "ManifestInvalid", "broken")


# --- several production engines (sidecar.canary.production) ---------------------------------

GOOD, BAD = [1.0, 2.0], [1.0, 2.5]
# one step: (outputs or None when not loaded in the worker, the files' fingerprint)
Step = tuple[list[float] | None, str | None]


@pytest.mark.parametrize(
    ("steps", "want"),
    [
        # verified, released: its pass stands while the files are those it was verified from
        (
            [(GOOD, "f1"), (None, "f1"), (None, "f1")],
            ["CanaryPassed+release", "VerifiedAndReleased", "VerifiedAndReleased"],
        ),
        # the files changed after the release: no stale pass; loaded again, verified again
        (
            [(GOOD, "f1"), (None, "f2"), (GOOD, "f2"), (None, "f2")],
            ["CanaryPassed+release", "EngineChanged+reload", "CanaryPassed+release", "VerifiedAndReleased"],
        ),
        # changed to files that no longer match: the reloaded engine's sticky mismatch
        (
            [(GOOD, "f1"), (None, "f2"), (BAD, "f2"), (GOOD, "f2")],
            ["CanaryPassed+release", "EngineChanged+reload", "CanaryMismatch", "CanaryMismatch"],
        ),
        # a mismatch is never released
        ([(BAD, "f1"), (GOOD, "f1")], ["CanaryMismatch", "CanaryMismatch"]),
        # not loaded and never verified
        ([(None, "f1")], ["LoadingEngine"]),
    ],
)
def test_released_engine_rounds(tmp_path: Path, steps: list[Step], want: list[str]) -> None:
    """release_after_verify: the verdict of each round, and what it asks for."""
    j, found = _production(tmp_path, True)
    seen = []
    for outputs, fp in steps:
        prod = None if outputs is None else {"out": np.array(outputs, np.float32)}
        got = j.production_round(ok([1.0]), found, 0, outputs=prod, fingerprint=fp)
        (r,) = got.results
        asks = "+release" if got.release_production else "+reload" if got.reload_production else ""
        seen.append(r.reason + asks)
        assert r.status is (
            CheckStatus.UNKNOWN if r.reason in ("EngineChanged", "LoadingEngine") else r.status
        )
    assert seen == want


def test_failed_reload_is_held_until_the_files_change(tmp_path: Path) -> None:
    """A released engine's failed load again: its reason held; tried again after
    restart_backoff_max, and at once when the files change."""
    j, found = _production(tmp_path, True)
    j.production_round(ok([1.0]), found, 0, outputs={"out": np.array(GOOD, np.float32)}, fingerprint="f1")
    assert j.production_round(ok([1.0]), found, 0, fingerprint="f2").reload_production
    err = WorkerError("EngineLoadFailed", "bad model", labels={"engine": "prod"})
    failed = j.engines[0].reload_failed(err, found, "f2")
    assert (failed.name, failed.status, failed.reason) == (
        "canary/engine/prod",
        CheckStatus.FAIL,
        "EngineLoadFailed",
    )
    assert "engine/prod" in failed.gates and "could not be loaded again: bad model" in failed.message
    held = j.production_round(ok([1.0]), found, 0, fingerprint="f2", now=59.0)
    assert held.results == [failed] and not held.reload_production
    retry = j.production_round(ok([1.0]), found, 0, fingerprint="f2", now=60.0)  # restart_backoff_max
    assert retry.results == [failed] and retry.reload_production  # tried again (memory may be back)
    again = j.production_round(ok([1.0]), found, 0, fingerprint="f3")
    assert again.results[0].reason == "EngineChanged" and again.reload_production


def test_each_production_engine_has_its_own_verdict_and_latch(tmp_path: Path) -> None:
    """Two engines: the primary's mismatch latches only its own canary/engine/<name>; the
    fallback verifies and is released; a reload hands each latch to the same manifest's."""
    prim, fb = (
        ProductionEngineConfig(tmp_path / "prim.yaml", 512.0),
        ProductionEngineConfig(tmp_path / "fb.yaml", 64.0, True),
    )
    cfg = CanaryConfig(production_engines=(prim, fb))
    j = CanaryJudge(cfg)

    def found(name: str) -> ProductionGolden:
        m = EngineManifest(name=name, file=f"{name}.plan", directory=tmp_path, tolerance=Tolerance(0.0, 0.0))
        return ProductionGolden(m, {"out": np.array(GOOD, np.float32)})

    bad, good = {"out": np.array(BAD, np.float32)}, {"out": np.array(GOOD, np.float32)}
    p = j.production_round(ok([1.0]), found("prim"), 0, index=0, outputs=bad)
    f = j.production_round(ok([1.0]), found("fb"), 0, index=1, outputs=good, fingerprint="f1")
    assert (p.results[0].name, p.results[0].reason) == ("canary/engine/prim", "CanaryMismatch")
    assert (f.results[0].name, f.results[0].reason, f.release_production) == (
        "canary/engine/fb",
        "CanaryPassed",
        True,
    )
    assert j.production_failed is p.results[0]
    unread = j.production_unreadable(ValueError("x"), 1).results[0]
    assert (unread.name, unread.reason) == ("canary/engine/fb", "ManifestInvalid")
    new = CanaryJudge(CanaryConfig(production_engines=(fb, prim)))  # reordered by the reload
    assert new.take_over(j, "onnxruntime") == [p.results[0]]
    assert new.engines[1].latch.holds and not new.engines[0].latch.holds
