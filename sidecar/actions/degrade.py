"""Degraded serving with hysteresis (pure: the clock is passed in, no I/O).

Switch to the fallback only when the pressure lasted ``enter_after`` without a break and the
fallback is verified (present, intact, compatible; its own canary passed where required);
switch back only when the pressure has been gone for ``restore_after``. A failed call is retried
with backoff, at most ``max_attempts`` times per switch, then the machine stops and reports
until the pressure state changes.
"""

from __future__ import annotations

from sidecar.actions.config import DegradeSettings, RollbackSettings
from sidecar.actions.rollback import DEGRADE, RESTORE, Attempts, Decision


class DegradeMachine:
    def __init__(self, engine: str, settings: DegradeSettings, retry: RollbackSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.active = False  # the fallback serves
        self.pressure: str | None = None
        self.pressure_since: float | None = None
        self.clear_since: float | None = None
        self.fallback_ready = False
        self.fallback_why = "no fallback named"
        self.attempts = Attempts(retry.backoff_initial_s, retry.backoff_max_s, retry.max_attempts)

    def retune(self, settings: DegradeSettings, retry: RollbackSettings) -> None:
        """New settings (a reload); the state stays."""
        self.settings = settings
        a = self.attempts
        a.initial_s, a.max_s, a.limit = retry.backoff_initial_s, retry.backoff_max_s, retry.max_attempts

    def update(self, pressure: str | None, fallback_ready: bool, fallback_why: str, now: float) -> None:
        self.fallback_ready, self.fallback_why = fallback_ready, fallback_why
        was = self.pressure is not None
        self.pressure = pressure
        if pressure is not None and not was:
            self.pressure_since, self.clear_since = now, None
            self.attempts.reset()
        elif pressure is None and was:
            self.pressure_since, self.clear_since = None, now
            self.attempts.reset()
        elif pressure is None and self.clear_since is None:
            self.clear_since = now

    def decide(self, now: float, fallback_version: str | None) -> Decision | None:
        s = self.settings
        if not self.active:
            if (
                self.pressure is None
                or self.pressure_since is None
                or now - self.pressure_since < s.enter_after_s
                or not self.fallback_ready
                or fallback_version is None
                or not self.attempts.ready(now)
            ):
                return None
            return Decision(DEGRADE, self.engine, fallback_version, None, self.pressure)
        if (
            self.pressure is not None
            or self.clear_since is None
            or now - self.clear_since < s.restore_after_s
            or not self.attempts.ready(now)
        ):
            return None
        return Decision(
            RESTORE, self.engine, None, fallback_version, f"no pressure for {s.restore_after_s:g}s"
        )

    def done(self, decision: Decision, ok: bool, now: float) -> None:
        if ok:
            self.active = decision.kind == DEGRADE
            self.attempts.reset()
        else:
            self.attempts.failed(now)

    def status(self, now: float) -> tuple[str, str]:
        """(reason, message); reason "" is "serving at full capability"."""
        if self.active:
            why = self.pressure or "pressure cleared, waiting for the hysteresis window"
            return "ServingFallback", f"serving the fallback: {why}"
        if self.pressure is not None:
            if self.attempts.exhausted():
                return "DegradeGaveUp", f"{self.attempts.count} calls failed: {self.pressure}"
            if not self.fallback_ready:
                return "FallbackNotVerified", f"{self.pressure}; fallback not usable: {self.fallback_why}"
            since = now - (self.pressure_since or now)
            return "UnderPressure", f"{self.pressure} for {since:.0f}s"
        return "", "full capability"
