"""After a burst of Watch calls dies down the heap is given back to the OS (malloc_trim), once."""

from __future__ import annotations

from sidecar.publish.health_store import HealthRegistry
from sidecar.publish.watch_sender import TRIM_AFTER_CALLS, RpcStats, WatchSender


def test_trims_once_after_a_burst_has_died_down() -> None:
    stats = RpcStats()
    trims: list[int] = []
    sender = WatchSender(HealthRegistry(), stats, threads=1, trim=lambda: trims.append(1))
    try:
        assert not sender.maybe_trim()  # nothing happened
        for _ in range(TRIM_AFTER_CALLS):
            stats.count("Watch", "RESOURCE_EXHAUSTED")
        assert not sender.maybe_trim()  # the burst is still going on (this tick saw it)
        assert trims == []
        stats.count("Watch", "OK")  # a trickle is "died down"
        assert sender.maybe_trim()
        assert trims == [1]
        for _ in range(10):
            assert not sender.maybe_trim()  # once per burst
        for _ in range(TRIM_AFTER_CALLS // 2):
            stats.count("Check", "OK")  # other methods do not count
        assert not sender.maybe_trim()
        assert trims == [1]
    finally:
        sender.shutdown(0)
