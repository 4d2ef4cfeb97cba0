"""The soak of bench/soak.py, short: load, random faults, engine swaps, worker kills."""

from __future__ import annotations

from bench.soak import FD_BOUND, RSS_BOUND_MB, THREAD_BOUND, run_soak


def test_soak_short() -> None:
    """~45 s of faults under Check / Watch load: no crash, every fault detected, probes within
    1 s, readiness SERVING at the end, fds / threads / RSS within the stated bounds."""
    res = run_soak(45.0, watchers=10, seed=7)
    print(res.summary())
    assert res.ok, res.summary()
    assert sum(res.faults.values()) >= 12  # the warm-up alone injects every kind once
    assert res.end["fds"] - res.start["fds"] <= FD_BOUND
    assert res.end["threads"] - res.start["threads"] <= THREAD_BOUND
    assert res.end["rss_mb"] - res.start["rss_mb"] <= RSS_BOUND_MB
    assert res.probes > 100 and res.checks > 1000
