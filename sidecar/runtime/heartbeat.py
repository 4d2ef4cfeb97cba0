"""Liveness: the loop's heartbeat, and the watchdog that judges the loop from outside it.

The heartbeat wakes every ``heartbeat_interval_s``: liveness turns NOT_SERVING when it woke
later than ``max_loop_lag_s`` (EventLoopLag) or a check loop stopped beating
(SchedulerStalled). A blocked loop runs no heartbeat: the :class:`LoopWatchdog` thread then
holds liveness NOT_SERVING in every publisher (EventLoopBlocked) until the next beat."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.core.policy import HealthPolicy
from sidecar.core.protocols import Clock
from sidecar.publish.fanout import PublisherSet
from sidecar.runtime.scheduler import Scheduler
from sidecar.runtime.watchdog import LoopWatchdog

if TYPE_CHECKING:
    from sidecar.config import LivenessConfig

# the lines of the app's liveness, under the logger they always had
log = logging.getLogger("sidecar.app")


class Heartbeat:
    """Judges liveness into ``policy``; ``republish`` publishes the policy's verdict."""

    def __init__(
        self,
        config: LivenessConfig,
        *,
        policy: HealthPolicy,
        scheduler: Scheduler,
        publishers: PublisherSet,
        republish: Callable[[], None],
        record_lag: Callable[[float], None],
        clock: Clock,
    ) -> None:
        self._config = config
        self._policy = policy
        self._scheduler = scheduler
        self._publishers = publishers
        self._republish = republish
        self._record_lag = record_lag
        self._clock = clock
        self._liveness: tuple[bool, str] = (True, "")
        # liveness judged from outside the loop: a blocked loop beats no heartbeat
        self.watchdog = LoopWatchdog(
            config.heartbeat_interval_s + config.max_loop_lag_s, self._loop_blocked, clock=clock
        )

    def start_watchdog(self) -> None:
        self.watchdog.start(min(self._config.heartbeat_interval_s, self._config.max_loop_lag_s) / 2)

    def stop_watchdog(self) -> None:
        self.watchdog.stop()

    async def run(self) -> None:
        """Liveness: the loop wakes on time and every check loop keeps beating."""
        interval = self._config.heartbeat_interval_s
        max_lag = self._config.max_loop_lag_s
        while True:
            before = self._clock()
            await asyncio.sleep(interval)
            republish = self.watchdog.beat()
            if republish:  # the watchdog held liveness while the loop was blocked: let go
                self._publishers.release_liveness()
            now = self._clock()
            lag = max(0.0, now - before - interval)
            self._record_lag(lag)
            stalled = self._scheduler.stalled(now, lambda c: c.timeout_s + c.interval_s * 1.6 + max_lag + 1.0)
            if lag > max_lag:
                alive, reason = False, f"EventLoopLag: {lag:.1f}s"
            elif stalled:
                alive, reason = False, "SchedulerStalled: " + ", ".join(sorted(stalled))
            else:
                alive, reason = True, ""
            if (alive, reason) != self._liveness:
                self._liveness = (alive, reason)
                self._policy.set_liveness(alive, reason)
                self._republish()
            elif republish:  # the watchdog overrode liveness while the loop was blocked
                self._republish()

    def _loop_blocked(self, quiet_s: float) -> None:
        """Watchdog thread: the loop missed its heartbeat. Liveness NOT_SERVING at once in
        every publisher, the /healthz body included (see :mod:`sidecar.publish.fanout`)."""
        reason = f"EventLoopBlocked: no heartbeat for {quiet_s:.1f}s"
        self._publishers.hold_liveness(reason)
        log.error("event loop blocked: liveness NOT_SERVING", extra={"reason": reason})
