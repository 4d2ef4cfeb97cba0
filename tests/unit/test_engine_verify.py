"""The engine verification rules as tables: facts and a driven clock in, results out (no files)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sidecar.core.values import SERVICE_READINESS, CheckStatus, Severity
from sidecar.engine.config import EnginesConfig, EngineSpec
from sidecar.engine.files import DANGLING, MISSING, FileStamp, HashResult, Stability
from sidecar.engine.manifest import EngineManifest
from sidecar.engine.plan import PlanHeader
from sidecar.engine.verify import EngineVerification

OK, FAIL, UNKNOWN = CheckStatus.OK, CheckStatus.FAIL, CheckStatus.UNKNOWN
PATH = Path("/engines/model.plan")
MANIFEST = Path("/engines/model.plan.manifest.yaml")
SHA = "ab" * 32
PLAN = PlanHeader(is_plan=True, magic=b"ftrt", layout=0, tensorrt_version="10.13.0.35")


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stamp(size: int = 1024, mtime: int = 1, inode: int = 7) -> FileStamp:
    return FileStamp(size, mtime, mtime, inode, 1)


def manifest(**kw: object) -> EngineManifest:
    fields: dict[str, object] = {
        "name": "prod",
        "file": "model.plan",
        "directory": PATH.parent,
        "sha256": SHA,
        "size": 1024,
        "tensorrt_version": "10.13.0.35",
        "compute_capability": "9.0",
    }
    fields.update(kw)
    return EngineManifest(**fields)  # type: ignore[arg-type]


def engine(
    clock: Clock | None = None, *, with_manifest: bool = True, m: EngineManifest | None = None, **cfg: object
) -> EngineVerification:
    spec = EngineSpec("prod", manifest=MANIFEST) if with_manifest else EngineSpec("prod", file=PATH)
    base: dict[str, object] = {"engines": (spec,), "stable_window_s": 0.5, "hash_min_interval_s": 1.0}
    base.update(cfg)
    v = EngineVerification(spec, EnginesConfig(**base), clock or Clock())  # type: ignore[arg-type]
    v.path = PATH
    if with_manifest:
        v.manifest_ok(m or manifest())
    return v


def hashed(sha: str = SHA) -> HashResult:
    return HashResult(sha, 1024, 0.5)


# -- version: header against manifest, then against the runtime ---------------------------------

V = "10.13.0.35"


@pytest.mark.parametrize(
    ("header", "manifest_version", "vc", "runtime", "source", "status", "reason", "severity"),
    [
        (None, V, False, V, "config", UNKNOWN, "EngineNotAPlan", Severity.CRITICAL),
        (replace(PLAN, is_plan=False), V, False, V, "config", UNKNOWN, "EngineNotAPlan", Severity.CRITICAL),
        (replace(PLAN, layout=3), V, False, V, "config", OK, "PlanHeaderUnrecognized", Severity.INFO),
        (PLAN, "10.8.0.43", False, V, "config", FAIL, "EngineVersionMismatch", Severity.CRITICAL),
        (PLAN, V, False, None, "canary-worker", OK, "Unmonitored", Severity.INFO),
        (PLAN, V, False, V, "config", OK, "", Severity.CRITICAL),
        (PLAN, None, False, V, "config", OK, "", Severity.CRITICAL),
        (PLAN, V, False, "10.14.1.48", "config", FAIL, "EngineVersionMismatch", Severity.CRITICAL),
        # only the canary worker's runtime: not necessarily the main server's, a warning
        (PLAN, V, False, "10.14.1.48", "canary-worker", FAIL, "EngineVersionMismatch", Severity.WARNING),
        (PLAN, V, True, "10.14.1.48", "config", OK, "", Severity.CRITICAL),
        (PLAN, V, True, "10.8.0.43", "config", FAIL, "EngineVersionMismatch", Severity.CRITICAL),
    ],
)
def test_version(
    header: PlanHeader | None,
    manifest_version: str | None,
    vc: bool,
    runtime: str | None,
    source: str,
    status: CheckStatus,
    reason: str,
    severity: Severity,
) -> None:
    v = engine(m=manifest(tensorrt_version=manifest_version, version_compatible=vc))
    if header is not None:
        v.plan_result(header)
    r = v.version_result(runtime, source)
    assert (r.name, r.status, r.reason, r.severity) == ("engine/prod/version", status, reason, severity)


def test_plan_tag() -> None:
    v = engine()
    assert v.plan_result(PLAN).ok
    r = v.plan_result(replace(PLAN, is_plan=False, problem="wrong magic"))
    assert (r.status, r.reason) == (FAIL, "EngineNotAPlan") and "wrong magic" in r.message
    r = v.plan_unreadable(PermissionError("denied"))
    assert (r.status, r.reason, v.header) == (FAIL, "EngineMissing", None)


# -- compute capability, memory -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("built_for", "hw", "gpu", "status", "reason"),
    [
        ("9.0", "none", "9.0", OK, ""),
        ("9.0", "none", "8.0", FAIL, "EngineArchMismatch"),
        ("8.0", "ampere+", "9.0", OK, ""),
        ("8.0", "ampere+", "7.5", FAIL, "EngineArchMismatch"),
        ("9.0", "none", None, OK, "Unmonitored"),
        (None, "none", "9.0", OK, "Unmonitored"),
    ],
)
def test_arch(built_for: str | None, hw: str, gpu: str | None, status: CheckStatus, reason: str) -> None:
    v = engine(m=manifest(compute_capability=built_for, hardware_compatibility=hw))
    r = v.arch_result(gpu)
    assert (r.status, r.reason) == (status, reason)
    if gpu and built_for:
        assert r.labels["built_for"] == built_for and r.labels["gpu"] == gpu


@pytest.mark.parametrize(
    ("check_memory", "size", "free", "status", "reason", "severity"),
    [
        (True, 100 << 20, 200 << 20, OK, "", Severity.WARNING),
        (True, 300 << 20, 200 << 20, FAIL, "InsufficientGpuMemory", Severity.WARNING),
        (True, 100 << 20, None, OK, "Unmonitored", Severity.INFO),
        (False, 300 << 20, 200 << 20, OK, "Unmonitored", Severity.INFO),
    ],
)
def test_memory(
    check_memory: bool, size: int, free: int | None, status: CheckStatus, reason: str, severity: Severity
) -> None:
    v = engine()
    v.spec = replace(v.spec, check_memory=check_memory)
    r = v.memory_result(size, free)
    assert (r.status, r.reason, r.severity) == (status, reason, severity)
    if status is FAIL:
        assert r.value == float(size - (free or 0))


# -- checksum -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "manifest_size", "sha", "expected"),
    [
        (1024, 1024, SHA, None),  # hash on
        (1000, 1024, SHA, (FAIL, "EngineChecksumMismatch", "truncated")),
        (2048, 1024, SHA, (FAIL, "EngineChecksumMismatch", "larger than expected")),
        (1000, None, SHA, None),  # no size in the manifest: the hash decides
        (1024, 1024, None, (OK, "Unmonitored", "no sha256")),
    ],
)
def test_size_before_hashing(
    size: int, manifest_size: int | None, sha: str | None, expected: tuple[CheckStatus, str, str] | None
) -> None:
    m = manifest(size=manifest_size, sha256=sha)
    r = engine(m=m).size_result(stamp(size), m)
    if expected is None:
        assert r is None
    else:
        assert r is not None and (r.status, r.reason) == expected[:2] and expected[2] in r.message


def test_checksum_compares_the_last_hash() -> None:
    v = engine()
    v.hashed(hashed(SHA), stamp())
    assert v.checksum_result(manifest()).ok
    v.hashed(hashed("cd" * 32), stamp())
    r = v.checksum_result(manifest())
    assert (r.status, r.reason) == (FAIL, "EngineChecksumMismatch")
    assert r.labels["mb_per_s"] == "0" and r.labels["seconds_per_gb"] == "488281.25"


def test_hash_failures() -> None:
    v = engine()
    assert (v.hash_timed_out(5_000_000).status, v.hash_timed_out(0).reason) == (UNKNOWN, "EngineHashTimeout")
    assert v.hash_missing(PATH).reason == "EngineMissing"
    assert v.hash_read_error(OSError(5, "EIO")).reason == "EngineChecksumMismatch"
    assert v.hash_unstable().reason == "EngineUnstable"


def test_hash_is_reused_until_the_file_changes_or_the_rehash_interval_passes() -> None:
    """None = the last hash stands; a number = wait that long, then hash."""
    clock = Clock()
    v = engine(clock, rehash_interval_s=3600.0, hash_min_interval_s=1.0)
    assert v.hash_wait(stamp()) == 0.0  # never hashed
    v.hash_started()
    v.hashed(hashed(), stamp())
    assert v.hash_wait(stamp()) is None  # same stamp, fresh
    # another file, right after the last hash started: the rate limit makes it wait
    assert v.hash_wait(stamp(mtime=2)) == pytest.approx(1.0)
    clock.now += 0.25
    assert v.hash_wait(stamp(mtime=2)) == pytest.approx(0.75)
    clock.now += 1.0
    assert v.hash_wait(stamp(mtime=2)) == 0.0
    # the same file, past the rehash interval: hashed again
    clock.now += 3600.0
    assert v.hash_wait(stamp()) == 0.0


# -- the file: present, a regular file, stable --------------------------------------------------


@pytest.mark.parametrize(
    ("stab", "problem", "reason", "proceed", "retrigger", "words"),
    [
        (Stability(True, stamp(), stamp()), None, "", True, False, "present and stable (1024 bytes)"),
        (Stability(False, None, None), MISSING, "EngineMissing", False, False, "does not exist"),
        (Stability(False, None, stamp()), MISSING, "EngineMissing", False, False, "disappeared"),
        (Stability(False, None, None), DANGLING, "EngineMissing", False, False, "dangling symlink"),
        (Stability(False, None, None), "a directory", "EngineNotAFile", False, False, "is a directory"),
        (Stability(False, stamp(mtime=2), stamp()), None, "EngineUnstable", False, True, "being written"),
    ],
)
def test_file(
    stab: Stability, problem: str | None, reason: str, proceed: bool, retrigger: bool, words: str
) -> None:
    v = engine()
    j = v.judge_file(PATH, stab, problem)
    file = j.results[0]
    assert (file.name, file.reason, j.proceed, j.retrigger) == (
        "engine/prod/file",
        reason,
        proceed,
        retrigger,
    )
    assert words in file.message
    blocked = {r.name.rsplit("/", 1)[-1] for r in j.results[1:]}
    if proceed:
        assert blocked == set()
    else:  # what cannot be decided without the file is unknown, naming why
        assert blocked == {"checksum", "arch", "memory", "plan", "version"}
        assert all(r.status is UNKNOWN and r.reason == reason for r in j.results[1:])


def test_a_stamp_seen_a_window_ago_needs_no_second_look() -> None:
    clock = Clock()
    v = engine(clock, stable_window_s=0.5)
    assert v.stability_reference() is None  # never looked
    v.judge_file(PATH, Stability(True, stamp(), stamp()), None)
    assert v.stability_reference() is None  # seen just now
    clock.now += 0.5
    assert v.stability_reference() == stamp()
    v.judge_file(PATH, Stability(False, stamp(mtime=3), stamp()), None)  # being written
    clock.now += 0.4
    assert v.stability_reference() is None


def test_no_manifest_blocks_what_it_decides() -> None:
    v = engine(with_manifest=False)
    assert v.manifest_conds == () and v.dependent(PATH) == ("plan", "version", "arch")
    assert v.dependent(Path("/engines/model.onnx")) == ()
    spec = EngineSpec("prod", manifest=MANIFEST)
    v = EngineVerification(spec, EnginesConfig(engines=(spec,)))
    assert [(r.name, r.reason) for r in v.no_manifest()] == [
        (f"engine/prod/{c}", "EngineManifestInvalid") for c in ("file", "checksum", "arch", "memory")
    ]
    assert v.manifest_failed("manifest x not found").status is FAIL


# -- the outcome: verified, the baseline, replacements, gates -----------------------------------


def test_first_success_records_the_baseline_and_is_kept() -> None:
    v = engine()
    v.hashed(hashed(SHA), stamp())
    change, keep = v.succeeded()
    assert (change.ok, change.message, keep, v.verified_once) == (
        True,
        "verified; baseline recorded",
        True,
        True,
    )
    change, keep = v.succeeded()  # the same file again
    assert (change.ok, keep) == (True, False)
    v.hashed(hashed("cd" * 32), stamp(mtime=5))  # a replacement that verifies
    change, keep = v.succeeded()
    assert (change.status, change.reason, change.severity, keep) == (
        FAIL,
        "EngineReplaced",
        Severity.WARNING,
        True,
    )
    assert change.labels["sha256"] == "cd" * 32


def test_without_a_hash_the_stamp_is_the_baseline() -> None:
    v = engine(with_manifest=False)
    v.judge_file(PATH, Stability(True, stamp(), stamp()), None)
    assert v.succeeded()[1] is True
    assert v.succeeded()[0].ok
    v.judge_file(PATH, Stability(True, stamp(mtime=9), stamp(mtime=9)), None)
    assert v.succeeded()[0].reason == "EngineReplaced"


@pytest.mark.parametrize(
    ("gate_after", "after"), [(False, {"engine/prod"}), (True, {"engine/prod", SERVICE_READINESS})]
)
def test_gates_before_and_after_the_first_verification(gate_after: bool, after: set[str]) -> None:
    v = engine(gate_readiness_after_verified=gate_after)
    assert v.result("file", OK, "", "").gates == {"engine/prod", SERVICE_READINESS}
    v.succeeded()
    assert v.result("file", OK, "", "").gates == after


def test_a_verified_engine_that_fails_names_the_last_good_copy() -> None:
    v = engine()
    r = v.failed_after_verified(Path("/keep/prod/model.plan"))
    assert (r.reason, r.severity, r.labels["last_good"]) == (
        "EngineReplaced",
        Severity.WARNING,
        "/keep/prod/model.plan",
    )
    assert "last good copy: /keep/prod/model.plan" in r.message
    assert "last_good" not in v.failed_after_verified(None).labels


def test_passed_needs_every_required_condition() -> None:
    v = engine()
    ok = [v.ok(c, "") for c in ("manifest", "file", "checksum")]
    assert v.passed(ok)
    assert v.passed([*ok, v.result("memory", FAIL, "InsufficientGpuMemory", "", severity=Severity.WARNING)])
    assert not v.passed([*ok, v.result("arch", FAIL, "EngineArchMismatch", "")])
    assert not v.passed([v.ok("memory", "")])  # nothing required was decided
    assert not v.passed([])


def test_a_change_seen_is_timed_to_its_reverification() -> None:
    clock = Clock()
    v = engine(clock)
    assert v.reverify_seconds() is None
    v.changed()
    clock.now += 2.5
    assert v.reverify_seconds() == 2.5
    assert v.reverify_seconds() is None  # once


def test_a_change_seen_before_and_after_verification() -> None:
    v = engine()
    assert v.change_seen(MANIFEST, None) == []
    assert [r.reason for r in v.change_seen(MANIFEST, PATH)] == ["EngineMissing"]
    v.succeeded()
    assert [r.reason for r in v.change_seen(MANIFEST, None)] == ["EngineReplaced"]
