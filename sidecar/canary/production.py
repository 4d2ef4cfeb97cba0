"""The verdicts of one production engine's canary, ``canary/engine/<name>``. Pure (no I/O,
no clock): :class:`sidecar.canary.judge.CanaryJudge` holds one :class:`EngineCanary` per
engine of ``canary.production_engines`` (the primary, a fallback verified in advance ...).

An engine loaded in the worker is compared with its manifest's goldens on every round (its
own sticky latch). With ``release_after_verify`` it is released once it passed, and its pass
stays valid (``VerifiedAndReleased``) while its files (manifest, engine file, golden inputs and
outputs: a :data:`Fingerprint`) are those it was verified from; when they change it is loaded
again (``EngineChanged``) and verified again. A load that fails is reported, and tried again
every ``restart_backoff_max`` and at once when the files change again.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from sidecar.canary import verdicts as v
from sidecar.canary.config import ProductionEngineConfig
from sidecar.canary.golden import compare_outputs
from sidecar.canary.golden_store import ProductionGolden
from sidecar.canary.latch import MismatchLatch
from sidecar.canary.protocol import WorkerError
from sidecar.core.values import CheckResult, Severity, engine_service

MISMATCH_REASON = "CanaryMismatch"
# what an engine's files looked like (ProductionGoldens.fingerprint); None: not looked at
Fingerprint = Hashable | None


class EngineVerdict:
    """One round's results for one engine and what they ask the component to do."""

    __slots__ = ("release", "reload", "results")

    def __init__(self, results: list[CheckResult], *, release: bool = False, reload: bool = False) -> None:
        self.results = results
        self.release = release  # verified: drop it in the worker
        self.reload = reload  # its files changed since it was verified: load it again


class EngineCanary:
    """What one production engine's canary remembers between rounds."""

    def __init__(self, config: ProductionEngineConfig, recovery_passes: int, retry_s: float = 60.0) -> None:
        self.config = config
        self.latch = MismatchLatch(recovery_passes)
        self.failed: CheckResult | None = None  # the last result while the latch holds
        self.released = False
        self.verified: Fingerprint = None  # the files its released pass was of
        self.retry_s = retry_s  # a failed reload is tried again this often (and on a change)
        # a failed reload: of which files, its result, when
        self.load_failed: tuple[Fingerprint, CheckResult, float] | None = None

    def name(self, found: ProductionGolden | None = None) -> str:
        stem = found.manifest.name if found is not None else self.config.manifest.stem
        return f"canary/engine/{stem}"

    def unreadable(self, exc: Exception) -> EngineVerdict:
        """The manifest could not be read (named by the file's stem)."""
        return EngineVerdict([CheckResult.failed(self.name(), "ManifestInvalid", str(exc), gates=v.GATES)])

    def round(
        self,
        outputs: dict[str, np.ndarray] | None,
        found: ProductionGolden,
        generation: int,
        fingerprint: Fingerprint = None,
        now: float = 0.0,
    ) -> EngineVerdict:
        """``outputs``: the engine's answer this round (None: not loaded in the worker).
        ``fingerprint``: its files as loaded (with outputs), or as they are now (without)."""
        m = found.manifest
        name = self.name(found)
        gates = v.GATES | {engine_service(m.name)}
        if outputs is None:
            return self._not_loaded(name, gates, fingerprint, now)
        cmp = compare_outputs(outputs, found.outputs(), m.tolerance)
        if not cmp.matches:
            self.latch.mismatch(generation, f"production engine {m.name}: {cmp.detail}")
        else:
            self.latch.passed()
        if self.latch.holds:
            self.failed = CheckResult.failed(
                name, MISMATCH_REASON, self.latch.message, severity=Severity.FATAL, gates=gates
            )
            return EngineVerdict([self.failed])
        self.failed = None
        passed = CheckResult.passed(
            name, reason="CanaryPassed", message=f"production engine {m.name} matches golden", gates=gates
        )
        if not self.config.release_after_verify:
            return EngineVerdict([passed])
        self.released, self.verified = True, fingerprint
        return EngineVerdict([passed], release=True)

    def _not_loaded(
        self, name: str, gates: frozenset[str], fingerprint: Fingerprint, now: float
    ) -> EngineVerdict:
        if self.load_failed is not None:
            failed_for, result, at = self.load_failed
            if fingerprint == failed_for:  # the same files: tried again now and then
                return EngineVerdict([result], reload=now - at >= self.retry_s)
            self.load_failed = None
            return self._changed(name, gates, "changed since its load failed")
        if self.released:
            if fingerprint == self.verified:
                released = CheckResult.passed(
                    name,
                    reason="VerifiedAndReleased",
                    message="production engine verified, then released",
                    gates=gates,
                )
                return EngineVerdict([released])
            self.released = False
            return self._changed(name, gates, "changed since it was verified and released")
        return EngineVerdict(
            [CheckResult.unknown(name, "LoadingEngine", "production engine not loaded", gates=gates)]
        )

    def _changed(self, name: str, gates: frozenset[str], what: str) -> EngineVerdict:
        msg = f"the production engine's files {what}; loading it again to verify it"
        return EngineVerdict([CheckResult.unknown(name, "EngineChanged", msg, gates=gates)], reload=True)

    def reload_failed(
        self, err: WorkerError, found: ProductionGolden, fingerprint: Fingerprint, now: float = 0.0
    ) -> CheckResult:
        """Loading it again failed: reported until it loads (tried again every ``retry_s``,
        and at once when its files change)."""
        m = found.manifest
        labels = {**err.labels, **({"cuda_error": err.cuda_error} if err.cuda_error else {})}
        result = CheckResult.failed(
            self.name(found),
            err.reason,
            f"production engine {m.name} could not be loaded again: {err.message} (tried again "
            f"every {self.retry_s:g}s and when its files change)",
            labels=labels,
            gates=v.GATES | {engine_service(m.name)},
        )
        self.load_failed = (fingerprint, result, now)
        return result
