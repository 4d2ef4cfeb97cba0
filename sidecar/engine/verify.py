"""The engine verification rules, pure: facts and time in, CheckResults out.

:class:`EngineVerification` is the state of one configured engine between verifications (the
last good manifest, the stamps seen, the last hash, the baseline of the first success) and the
rules that turn what the I/O edge (:mod:`sidecar.engine.check`) observed into ``engine/<name>/
<condition>`` results: manifest, file (present, a regular file, stable), plan tag, header
version against the manifest and the runtime, checksum (size, then SHA-256), compute
capability, memory fit (warning only), and the ``change`` of a verified engine. It reads no
file and no clock of its own: the clock is injected, the facts are arguments.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sidecar.core.protocols import Clock
from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.engine.config import EnginesConfig, EngineSpec
from sidecar.engine.files import DANGLING, MISSING, FileStamp, HashResult, Stability
from sidecar.engine.manifest import EngineManifest
from sidecar.engine.plan import PlanHeader, compare_versions
from sidecar.engine.results import CONDITIONS, REQUIRED, EngineResults

__all__ = [
    "CONDITIONS",
    "REQUIRED",
    "EngineVerification",
    "FileJudgement",
    "check_compute_capability",
]


def check_compute_capability(built_for: str, gpu: str, hardware_compatibility: str) -> tuple[bool, str]:
    """Would a plan built for ``built_for`` run on a GPU of compute capability ``gpu``?"""

    def parse(cc: str) -> tuple[int, int]:
        major, _, minor = cc.partition(".")
        return int(major), int(minor or 0)

    try:
        b, g = parse(built_for), parse(gpu)
    except ValueError:
        return True, f"cannot compare compute capabilities {built_for!r} and {gpu!r}"
    if hardware_compatibility == "ampere+":
        if g >= (8, 0):
            return True, f"hardware-compatible (ampere+) plan runs on compute {gpu}"
        return False, f"ampere+ plan needs compute >= 8.0, this GPU is {gpu}"
    if b == g:
        return True, f"built for compute {built_for}, this GPU is {gpu}"
    return False, f"built for compute {built_for}, this GPU is compute {gpu}: rebuild the engine"


@dataclass(frozen=True, slots=True)
class FileJudgement:
    """The file stage: its results, whether verification goes on, and whether to look again
    after the stability window (a file being written)."""

    results: list[CheckResult]
    proceed: bool
    retrigger: bool = False


class EngineVerification(EngineResults):
    """One engine's verification state and rules (no I/O; ``clock`` is injected)."""

    def __init__(self, spec: EngineSpec, config: EnginesConfig, clock: Clock = time.monotonic) -> None:
        super().__init__(spec, config)
        self.clock = clock
        self.baseline_sha: str | None = None
        self.baseline_stamp: FileStamp | None = None
        self.observed: FileStamp | None = None
        self.observed_at = 0.0
        self.hashed_stamp: FileStamp | None = None
        self.hash_result: HashResult | None = None
        self.hashed_at = -1e18
        self.hash_started_at = -1e18
        self.event_at: float | None = None
        self.header: PlanHeader | None = None

    # -- 1. manifest --------------------------------------------------------------------------

    @property
    def manifest_conds(self) -> tuple[str, ...]:
        """The conditions a manifest decides (none without one)."""
        return ("checksum", "arch", "memory") if self.spec.manifest is not None else ()

    def manifest_failed(self, message: str) -> CheckResult:
        """The manifest is missing, unreadable or invalid (``message`` says which)."""
        return self.result("manifest", CheckStatus.FAIL, "EngineManifestInvalid", message)

    def manifest_ok(self, m: EngineManifest) -> CheckResult:
        self.manifest = m
        return self.ok("manifest", f"manifest {self.spec.manifest} is valid")

    def no_manifest(self) -> list[CheckResult]:
        """No manifest ever parsed: nothing it decides can be checked."""
        return self.blocked(("file", *self.manifest_conds), "EngineManifestInvalid", "no valid manifest")

    def engine_path(self) -> Path | None:
        """The engine file: configured, or named by the (last good) manifest."""
        if self.spec.file is not None:
            return self.spec.file
        return self.manifest.path if self.manifest is not None else None

    def format(self, path: Path) -> str:
        if self.spec.format:
            return self.spec.format
        if self.manifest is not None:
            return self.manifest.format
        return "onnx" if path.suffix.lower() == ".onnx" else "tensorrt-plan"

    def dependent(self, path: Path) -> tuple[str, ...]:
        """The conditions that cannot be decided without the file at ``path``."""
        plan: tuple[str, ...] = ("plan", "version", "arch") if self.format(path) == "tensorrt-plan" else ()
        return tuple(dict.fromkeys((*self.manifest_conds, *plan)))

    # -- 2. present and stable ------------------------------------------------------------------

    def stability_reference(self) -> FileStamp | None:
        """The stamp seen at least a stability window ago (then no second look is needed)."""
        if self.clock() - self.observed_at >= self.config.stable_window_s:
            return self.observed
        return None

    def judge_file(self, path: Path, stab: Stability, problem: str | None) -> FileJudgement:
        """``stab`` from looking twice; ``problem`` (:func:`~sidecar.engine.files.path_problem`)
        only matters when the file was not there as a regular file."""
        dependent = self.dependent(path)
        window = self.config.stable_window_s
        if stab.stamp is None:
            self.observed = None
            if problem not in (None, MISSING, DANGLING):  # there, but no engine can be
                msg = f"{path} is {problem}, not a regular file"
                out = [self.result("file", CheckStatus.FAIL, "EngineNotAFile", msg)]
                return FileJudgement(out + self.blocked(dependent, "EngineNotAFile", msg), False)
            msg = f"{path} does not exist" if stab.previous is None else f"{path} disappeared"
            if problem == DANGLING:
                msg = f"{path} is a dangling symlink (its target does not exist)"
            out = [self.result("file", CheckStatus.FAIL, "EngineMissing", msg)]
            return FileJudgement(out + self.blocked(dependent, "EngineMissing", msg), False)
        if not stab.stable:
            self.observed, self.observed_at = stab.stamp, self.clock()
            msg = f"{path} is being written (size or mtime changed within {window}s)"
            out = [self.result("file", CheckStatus.FAIL, "EngineUnstable", msg)]
            return FileJudgement(out + self.blocked(dependent, "EngineUnstable", msg), False, retrigger=True)
        stamp = stab.stamp
        if self.observed != stamp:
            self.observed, self.observed_at = stamp, self.clock()
        return FileJudgement(
            [self.ok("file", f"{path} present and stable ({stamp.size} bytes)", value=stamp.size)], True
        )

    # -- 3. plan header and version -------------------------------------------------------------

    def plan_unreadable(self, error: OSError) -> CheckResult:
        self.header = None
        return self.result("plan", CheckStatus.FAIL, "EngineMissing", f"unreadable: {error}")

    def plan_result(self, header: PlanHeader) -> CheckResult:
        self.header = header
        if header.is_plan:
            return self.ok(
                "plan", "TensorRT plan tag present", labels={"header_version": header.tensorrt_version or ""}
            )
        return self.result(
            "plan", CheckStatus.FAIL, "EngineNotAPlan", f"not a TensorRT plan: {header.problem}"
        )

    def version_result(self, runtime: str | None, source: str) -> CheckResult:
        """The header's TensorRT version against the manifest's, then the runtime's (from
        ``source``: "config" names the main server's runtime, "canary-worker" only the worker's)."""
        header, m = self.header, self.manifest
        if header is None or not header.is_plan:
            return self.result("version", CheckStatus.UNKNOWN, "EngineNotAPlan", "not checked: not a plan")
        if not header.layout_known or header.tensorrt_version is None:
            return self.ok(
                "version",
                f"plan header layout not recognised ({header.problem}); inconclusive, left to "
                "deserialisation",
                reason="PlanHeaderUnrecognized",
                severity=Severity.INFO,
            )
        hv = header.tensorrt_version
        vc = bool(m and m.version_compatible)
        if m is not None and m.tensorrt_version:
            agree = compare_versions(hv, m.tensorrt_version, version_compatible=False)
            if agree.compatible is False:
                return self.result(
                    "version",
                    CheckStatus.FAIL,
                    "EngineVersionMismatch",
                    f"the plan header says TensorRT {hv} but the manifest says {m.tensorrt_version}",
                    labels={"header_version": hv},
                )
        if runtime is None:
            return self.ok(
                "version",
                f"plan built by TensorRT {hv}; runtime version unknown (set engines.tensorrt_version)",
                reason="Unmonitored",
                severity=Severity.INFO,
                value=hv,
            )
        verdict = compare_versions(hv, runtime, version_compatible=vc)
        labels = {"header_version": hv, "runtime_version": runtime}
        if verdict.compatible is False:
            # The worker's runtime is not necessarily the main server's: only a warning then.
            sev = Severity.CRITICAL if source == "config" else Severity.WARNING
            return self.result(
                "version",
                CheckStatus.FAIL,
                "EngineVersionMismatch",
                f"{verdict.message} (runtime version from {source}; header advisory)",
                severity=sev,
                value=hv,
                labels=labels,
            )
        return self.ok("version", verdict.message, value=hv, labels=labels)

    # -- 4. checksum ----------------------------------------------------------------------------

    def size_result(self, stamp: FileStamp, m: EngineManifest) -> CheckResult | None:
        """A size that differs from the manifest's fails without hashing; None: hash on."""
        if m.size is not None and m.size >= 0 and stamp.size != m.size:
            what = "truncated" if stamp.size < m.size else "larger than expected"
            return self.result(
                "checksum",
                CheckStatus.FAIL,
                "EngineChecksumMismatch",
                f"size {stamp.size} bytes, manifest says {m.size} ({what})",
                value=float(stamp.size),
            )
        if m.sha256 is None:
            return self.unmonitored("checksum", "manifest has no sha256")
        return None

    def hash_wait(self, stamp: FileStamp) -> float | None:
        """None when the last hash still stands for ``stamp``; else the seconds to wait before
        hashing (0 when due now): hashes start at least ``hash_min_interval`` apart, so a
        rewrite storm never hashes back to back."""
        now = self.clock()
        cfg = self.config
        fresh = (
            self.hash_result is not None
            and self.hashed_stamp == stamp
            and now - self.hashed_at < cfg.rehash_interval_s
        )
        if fresh:
            return None
        return max(0.0, self.hash_started_at + cfg.hash_min_interval_s - now)

    def hash_started(self) -> None:
        self.hash_started_at = self.clock()

    def hash_timed_out(self, done_bytes: int) -> CheckResult:
        return self.result(
            "checksum",
            CheckStatus.UNKNOWN,
            "EngineHashTimeout",
            f"hashing did not finish in {self.config.hash_timeout_s:.0f}s ({done_bytes / 1e6:.0f} MB read)",
        )

    def hash_missing(self, path: Path) -> CheckResult:
        return self.result("checksum", CheckStatus.FAIL, "EngineMissing", f"{path} disappeared")

    def hash_read_error(self, error: OSError) -> CheckResult:
        return self.result(
            "checksum", CheckStatus.FAIL, "EngineChecksumMismatch", f"read error while hashing: {error}"
        )

    def hash_unstable(self) -> CheckResult:
        return self.result(
            "checksum", CheckStatus.FAIL, "EngineUnstable", "the file changed while it was hashed"
        )

    def hashed(self, res: HashResult, stamp: FileStamp) -> None:
        self.hash_result, self.hashed_stamp, self.hashed_at = res, stamp, self.clock()

    def checksum_result(self, m: EngineManifest) -> CheckResult:
        """The last hash against the manifest's sha256."""
        res = self.hash_result
        assert res is not None
        labels = {"mb_per_s": f"{res.mb_per_s:.0f}", "seconds_per_gb": f"{res.seconds_per_gb:.2f}"}
        if res.sha256 != m.sha256:
            return self.result(
                "checksum",
                CheckStatus.FAIL,
                "EngineChecksumMismatch",
                f"sha256 {res.sha256[:12]}… differs from the manifest's {str(m.sha256)[:12]}…",
                value=res.seconds,
                labels=labels,
            )
        return self.ok(
            "checksum",
            f"sha256 matches ({res.size / 1e6:.0f} MB in {res.seconds:.2f}s, {res.mb_per_s:.0f} MB/s)",
            value=res.seconds,
            labels=labels,
        )

    # -- 5. compute capability, 6. memory -----------------------------------------------------

    def arch_result(self, gpu: str | None) -> CheckResult:
        """The manifest's compute capability against this GPU's (``gpu``, None: unknown)."""
        m = self.manifest
        if m is None or not m.compute_capability:
            return self.unmonitored("arch", "no compute capability in a manifest to compare")
        if not gpu:
            return self.unmonitored("arch", "this GPU's compute capability is unknown")
        ok, msg = check_compute_capability(m.compute_capability, gpu, m.hardware_compatibility)
        labels = {"built_for": m.compute_capability, "gpu": gpu}
        if ok:
            return self.ok("arch", msg, labels=labels)
        return self.result("arch", CheckStatus.FAIL, "EngineArchMismatch", msg, labels=labels)

    def memory_result(self, size: int, free: int | None) -> CheckResult:
        """Would ``size`` bytes of engine fit in ``free`` bytes of GPU memory (a warning)?"""
        if not self.spec.check_memory:
            return self.unmonitored("memory", "memory check disabled for this engine")
        if free is None:
            return self.unmonitored("memory", "free GPU memory unknown")
        if size > free:
            return self.result(
                "memory",
                CheckStatus.FAIL,
                "InsufficientGpuMemory",
                f"engine weights ~{size / 2**20:.0f} MiB exceed free GPU memory {free / 2**20:.0f} MiB",
                severity=Severity.WARNING,
                value=float(size - free),
            )
        return self.ok(
            "memory",
            f"engine {size / 2**20:.0f} MiB fits in {free / 2**20:.0f} MiB free",
            severity=Severity.WARNING,
        )

    # -- the outcome ------------------------------------------------------------------------------

    def reverify_seconds(self) -> float | None:
        """Seconds since the change that triggered this verification (once; None: no change)."""
        if self.event_at is None:
            return None
        took = self.clock() - self.event_at
        self.event_at = None
        return took

    def changed(self) -> None:
        """The watcher saw a change of a watched path."""
        self.event_at = self.clock()

    def succeeded(self) -> tuple[CheckResult, bool]:
        """After a verification that passed: the ``change`` result, and whether this file is a
        new last good one to keep (the first verified, or a replacement that verifies)."""
        sha = self.hash_result.sha256 if self.hash_result else None
        stamp = self.observed
        if not self.verified_once:
            self.verified_once = True
            self.baseline_sha, self.baseline_stamp = sha, stamp
            return self.ok("change", "verified; baseline recorded"), True
        same = (sha is not None and sha == self.baseline_sha) or (
            sha is None and stamp == self.baseline_stamp
        )
        if same:
            return self.ok("change", "the file is the one verified first"), False
        return (
            self.result(
                "change",
                CheckStatus.FAIL,
                "EngineReplaced",
                "the engine file was replaced by another one that verifies; the running server "
                "still holds the one it loaded (it loads the new file on restart)",
                severity=Severity.WARNING,
                labels={"sha256": sha or ""},
            ),
            True,
        )

    def failed_after_verified(self, kept: Path | None) -> CheckResult:
        """A verified engine no longer verifies; ``kept`` is the last good copy, if any."""
        msg = (
            "the engine file changed after verification and no longer verifies; "
            "the running server still holds the engine it loaded"
        )
        extra: dict[str, str] = {}
        if kept is not None:
            msg += f"; last good copy: {kept}"
            extra["last_good"] = str(kept)
        return self.result(
            "change", CheckStatus.FAIL, "EngineReplaced", msg, severity=Severity.WARNING, labels=extra
        )

    def change_seen(self, path: Path, deleted: Path | None) -> list[CheckResult]:
        """What a watched change of ``path`` says before re-verification: the engine file
        ``deleted`` (inotify only), and a replaced warning once verified."""
        out: list[CheckResult] = []
        if deleted is not None:
            out.append(self.result("file", CheckStatus.FAIL, "EngineMissing", f"{deleted} was deleted"))
        if self.verified_once:
            out.append(
                self.result(
                    "change",
                    CheckStatus.FAIL,
                    "EngineReplaced",
                    f"{path} changed after verification; re-verifying",
                    severity=Severity.WARNING,
                )
            )
        return out
