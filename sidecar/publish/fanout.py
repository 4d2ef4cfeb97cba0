"""Every publisher fed from one verdict, under one lock.

Two writers: the event loop publishes each new verdict; the loop watchdog's thread holds
liveness NOT_SERVING while the loop is blocked. The watchdog never rewrites what the loop
published: it sets an override and re-derives the publishers from the loop's last verdict
under the lock the loop takes, so a fresher verdict of the loop is served as it is, still
with liveness NOT_SERVING, until the loop's next heartbeat releases the hold."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from sidecar.core.protocols import Publication, Publisher
from sidecar.core.values import SERVICE_LIVENESS, Condition, ServiceVerdict


class PublisherSet:
    """The app's publishers (gRPC health, metrics, /healthz, Diagnostics) in one place."""

    def __init__(self, publishers: Sequence[Publisher]) -> None:
        self._publishers = list(publishers)
        self._lock = threading.Lock()
        self._latest = Publication()
        self._blocked: str | None = None  # EventLoopBlocked reason while the watchdog holds liveness

    def publish(self, conditions: Sequence[Condition], verdicts: Mapping[str, ServiceVerdict]) -> None:
        """Event loop: a new verdict, to every publisher."""
        with self._lock:
            self._latest = Publication(conditions, verdicts)
            self._fan_out(None)

    def hold_liveness(self, reason: str) -> None:
        """Watchdog thread: liveness NOT_SERVING at once in every publisher."""
        with self._lock:
            self._blocked = reason
            self._fan_out(SERVICE_LIVENESS)

    def release_liveness(self) -> None:
        """Event loop: the hold ends; the loop's next publication is served as it is."""
        with self._lock:
            self._blocked = None

    def _fan_out(self, only: str | None) -> None:
        publication = self._latest
        if self._blocked is not None:
            blocked = ServiceVerdict(SERVICE_LIVENESS, False, (self._blocked,))
            publication = Publication(
                publication.conditions, {**publication.verdicts, SERVICE_LIVENESS: blocked}
            )
        for publisher in self._publishers:
            publisher.publish(publication, only)
