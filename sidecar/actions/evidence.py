"""Blame, decided before anything acts (pure: no I/O, no clock).

The actions component keeps the latest result of every condition it is told about
(:class:`EvidenceBook`) and reads from it:

- a **GPU-level fault**: a failing CRITICAL/FATAL ``gpu/...`` condition (Xid, ECC, row remap,
  lost GPU, inventory), or the canary's own model failing with a silent-data-corruption or
  mismatch reason (the canary's engine is fixed, so a wrong answer is the GPU's). Trend and
  WARNING conditions are never a fault. A GPU fault blocks every engine rollback;
- an **engine fault** of engine ``X``: a failing verification condition
  ``engine/X/{manifest,file,checksum,plan,version,arch}`` (FAIL, not "not checked yet"), or the
  production-engine canary ``canary/engine/X`` failing (mismatch, deserialisation). The
  version at fault is the ``version`` label of the engine's results (from its manifest);
- **pressure** (for degraded serving): GPU memory headroom under a threshold (the value of
  ``gpu/<uuid>/memory``), the canary latency over budget, thermal / power throttling
  (``gpu/<uuid>/thermal`` slowdown reasons, or the trends detector's ``cause``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sidecar.core.values import CheckResult, CheckStatus, Severity

# engine/<name>/<suffix>: the verification conditions (as the engine component names them)
VERIFY_SUFFIXES = ("manifest", "file", "checksum", "plan", "version", "arch")
# the canary's own (fixed) model answering wrong is the GPU's fault
GPU_CANARY_REASONS = frozenset({"SilentDataCorruption", "CanaryMismatch"})
THROTTLE_REASONS = frozenset({"ThermalSlowdown", "ClocksHwSlowdown"})
THROTTLE_CAUSES = frozenset({"thermal_throttle", "power_throttle", "clocks_low"})
CANARY = "canary"
UNPARSED = "(unparsed manifest)"
CANARY_LATENCY = "canary/latency"
TRENDS_LATENCY = "trends/canary-latency"


@dataclass(frozen=True, slots=True)
class EngineEvidence:
    """What the evidence says about one engine right now."""

    engine: str
    version: str | None = None  # the version on the volume (manifest ``version``)
    fingerprint: str = ""  # version + declared sha256: a change of either is a new engine
    verified: bool = False  # every verification condition reported and passed
    fault: str | None = None  # "condition: reason" of the first failing one, None if none
    detail: str = ""  # its message (the evidence)
    fallback: str | None = None  # the manifest's ``fallback`` engine, if it names one
    canary_passed: bool = False  # canary/engine/<name> passed (its own canary)


def _failing(r: CheckResult) -> bool:
    return r.status is CheckStatus.FAIL and r.severity >= Severity.CRITICAL


class EvidenceBook:
    """The latest result of every condition (fed from ``ResultObserver.observe``)."""

    def __init__(self) -> None:
        self.latest: dict[str, CheckResult] = {}

    def add(self, results: Iterable[CheckResult]) -> None:
        for r in results:
            self.latest[r.name] = r

    def gpu_fault(self) -> str | None:
        """``"condition: reason"`` of a GPU-level fault, or None."""
        for name in sorted(self.latest):
            r = self.latest[name]
            if name.startswith("gpu/") and "/trend/" not in name and _failing(r):
                return f"{name}: {r.reason}"
            if name == CANARY and r.status is CheckStatus.FAIL and r.reason in GPU_CANARY_REASONS:
                return f"{name}: {r.reason}"
        return None

    def engine(self, name: str) -> EngineEvidence:
        prefix = f"engine/{name}/"
        own = [self.latest.get(prefix + s) for s in VERIFY_SUFFIXES]
        present = [r for r in own if r is not None]
        labels: Mapping[str, str] = {}
        for r in present:
            if r.labels.get("version"):
                labels = r.labels
                break
        version = labels.get("version") or None
        fingerprint = f"{version}@{labels.get('sha256', '')}" if version else ""
        manifest = self.latest.get(prefix + "manifest")
        if version is not None and manifest is not None and _failing(manifest):
            # the labels are the last good manifest's: the version on the volume is unknown
            version = UNPARSED
            fingerprint = f"{UNPARSED}@{manifest.message[:80]}"
        fault: str | None = None
        detail = ""
        for r in present:
            if _failing(r):
                fault, detail = f"{r.name}: {r.reason}", r.message
                break
        canary = self.latest.get(f"canary/engine/{name}")
        if fault is None and canary is not None and canary.status is CheckStatus.FAIL:
            fault, detail = f"{canary.name}: {canary.reason}", canary.message
        verified = (
            bool(present)
            and self.latest.get(prefix + "file") is not None
            and all(r.status is CheckStatus.OK for r in present)
        )
        return EngineEvidence(
            engine=name,
            version=version,
            fingerprint=fingerprint,
            verified=verified and fault is None,
            fault=fault,
            detail=detail,
            fallback=labels.get("fallback") or None,
            canary_passed=canary is not None and canary.status is CheckStatus.OK,
        )

    def pressure(self, *, min_free_mib: float, canary_latency: bool, throttling: bool) -> str | None:
        """``"condition: why"`` of resource pressure now, or None."""
        for name in sorted(self.latest):
            r = self.latest[name]
            if not name.startswith("gpu/") or "/trend/" in name:
                continue
            suffix = name.rsplit("/", 1)[-1]
            if (
                suffix == "memory"
                and min_free_mib > 0
                and isinstance(r.value, int | float)
                and r.value < min_free_mib
            ):
                return f"{name}: {r.value:g} MiB free, under {min_free_mib:g} MiB"
            if throttling and suffix == "thermal" and r.reason in THROTTLE_REASONS:
                return f"{name}: {r.reason}"
        lat = self.latest.get(CANARY_LATENCY)
        if canary_latency and lat is not None and lat.status is CheckStatus.FAIL:
            return f"{CANARY_LATENCY}: {lat.reason}"
        trend = self.latest.get(TRENDS_LATENCY)
        if (
            throttling
            and trend is not None
            and trend.status is CheckStatus.FAIL
            and trend.labels.get("cause", "") in THROTTLE_CAUSES
        ):
            return f"{TRENDS_LATENCY}: {trend.reason} ({trend.labels.get('cause')})"
        return None
