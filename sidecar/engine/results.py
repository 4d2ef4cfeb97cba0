"""The results of one engine's conditions (``engine/<name>/<condition>``): names, labels and
the services they gate (every condition gates ``readiness`` until the engine first verified;
afterwards, by default, only ``engine/<name>``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sidecar.core.values import SERVICE_READINESS, CheckResult, CheckStatus, Severity, engine_service
from sidecar.engine.config import EnginesConfig, EngineSpec
from sidecar.engine.manifest import EngineManifest

__all__ = ["CONDITIONS", "REQUIRED", "EngineResults"]

# Condition suffixes under engine/<name>/.
CONDITIONS = ("manifest", "file", "checksum", "plan", "version", "arch", "memory", "change")
# Conditions whose success is required for "verified".
REQUIRED = ("manifest", "file", "checksum", "plan", "version", "arch")


class EngineResults:
    """Builds the results of one configured engine; ``path`` (the engine file, once known),
    ``manifest`` (its version, sha256 and fallback label every result, for the actions) and
    ``verified_once`` decide labels and gates."""

    def __init__(self, spec: EngineSpec, config: EnginesConfig) -> None:
        self.spec = spec
        self.config = config
        self.path: Path | None = None
        self.manifest: EngineManifest | None = None  # the last good one
        self.verified_once = False

    @property
    def name(self) -> str:
        return self.spec.name

    def gates(self) -> frozenset[str]:
        svc = engine_service(self.spec.name)
        if not self.verified_once or self.config.gate_readiness_after_verified:
            return frozenset({svc, SERVICE_READINESS})
        return frozenset({svc})

    def result(
        self,
        cond: str,
        status: CheckStatus,
        reason: str,
        message: str,
        *,
        severity: Severity = Severity.CRITICAL,
        value: float | str | None = None,
        labels: dict[str, str] | None = None,
    ) -> CheckResult:
        lab = {"engine": self.spec.name}
        if self.path is not None:
            lab["path"] = str(self.path)
        m = self.manifest
        if m is not None and m.version is not None:  # what the actions component acts on
            lab["version"] = m.version
            if m.sha256:
                lab["sha256"] = m.sha256
            if m.fallback:
                lab["fallback"] = m.fallback
        if labels:
            lab.update(labels)
        return CheckResult(
            name=f"{engine_service(self.spec.name)}/{cond}",
            status=status,
            severity=severity,
            reason=reason,
            message=message,
            labels=lab,
            value=value,
            gates=self.gates(),
        )

    def ok(
        self,
        cond: str,
        message: str,
        *,
        reason: str = "",
        value: float | str | None = None,
        labels: dict[str, str] | None = None,
        severity: Severity = Severity.CRITICAL,
    ) -> CheckResult:
        return self.result(
            cond, CheckStatus.OK, reason, message, value=value, labels=labels, severity=severity
        )

    def unmonitored(self, cond: str, message: str) -> CheckResult:
        return self.ok(cond, message, reason="Unmonitored", severity=Severity.INFO)

    def blocked(self, conds: Sequence[str], reason: str, message: str) -> list[CheckResult]:
        return [self.result(c, CheckStatus.UNKNOWN, reason, f"not checked: {message}") for c in conds]

    def loading(self) -> list[CheckResult]:
        """What is known before the first verification: nothing yet (gating)."""
        conds = ("file", "checksum") if self.spec.manifest else ("file",)
        return [
            self.result(c, CheckStatus.UNKNOWN, "LoadingEngine", "engine not verified yet") for c in conds
        ]

    def timed_out(self, elapsed_s: float) -> CheckResult:
        return self.result(
            "checksum",
            CheckStatus.UNKNOWN,
            "EngineHashTimeout",
            f"verification still running after {elapsed_s:.0f}s",
        )

    @staticmethod
    def passed(results: Sequence[CheckResult]) -> bool:
        """Every required condition among ``results`` passed (and there was one)."""
        required = [r for r in results if r.name.rsplit("/", 1)[-1] in REQUIRED]
        return bool(required) and all(r.ok for r in required)
