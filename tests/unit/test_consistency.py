"""Replica consistency (sidecar/canary/consistency.py): digests of exact outputs, peer comparison."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry

from sidecar.canary.consistency import DigestGauge, DigestKey, PeerReport, compare_with_peers, output_digest

KEY = DigestKey("tensorrt", "ab12", "NVIDIA H200", "580.159.04", "13.0", "11.4.0", "c0ffee")


def test_digest_is_exact_and_order_independent() -> None:
    """One flipped bit changes the digest; the order the outputs arrive in does not."""
    a = np.arange(16, dtype=np.float32)
    b = a.copy()
    b.view(np.uint32)[3] ^= 1
    assert output_digest({"y": a, "z": a}) == output_digest({"z": a, "y": a})
    assert output_digest({"y": a}) != output_digest({"y": b})
    # same bytes, other dtype or shape: another answer
    assert output_digest({"y": a}) != output_digest({"y": a.view(np.int32)})
    assert output_digest({"y": a}) != output_digest({"y": a.reshape(4, 4)})


def peers(*digests: str, key: DigestKey = KEY) -> list[PeerReport]:
    return [PeerReport(f"10.0.0.{i}:9180", key, d) for i, d in enumerate(digests)]


def test_agreeing_fleet_is_not_an_outlier() -> None:
    v = compare_with_peers(KEY, "d1", peers("d1", "d1", "d1"))
    assert (v.comparable, v.agreeing, v.outlier, v.majority_digest) == (3, 3, False, "d1")
    assert v.agreement == 1.0


def test_minority_digest_is_an_outlier() -> None:
    v = compare_with_peers(KEY, "bad", peers("d1", "d1", "d1"))
    assert v.outlier and v.majority_digest == "d1" and v.agreement == 0.25


def test_too_few_peers_or_other_keys_never_decide() -> None:
    """One comparable peer cannot outvote us; peers with another key are not compared."""
    assert not compare_with_peers(KEY, "bad", peers("d1")).outlier
    other = DigestKey("tensorrt", "ff00", "NVIDIA H200")
    v = compare_with_peers(KEY, "bad", peers("d1", "d1", "d1", key=other))
    assert v.comparable == 0 and not v.outlier and len(v.skipped) == 3


def test_unreachable_peers_are_reported_not_counted() -> None:
    reports = [*peers("d1", "d1"), PeerReport("10.0.0.9:9180", error="UNAVAILABLE")]
    v = compare_with_peers(KEY, "d1", reports)
    assert v.comparable == 2 and v.skipped == ("10.0.0.9:9180: UNAVAILABLE",)


def test_a_tie_is_not_an_outlier() -> None:
    assert not compare_with_peers(KEY, "d2", peers("d1", "d1", "d2")).outlier


def test_digest_gauge_keeps_one_series_per_pod() -> None:
    """A new digest replaces the old series: never two digests for one pod."""
    reg = CollectorRegistry()
    g = DigestGauge(reg)
    g.publish(KEY, "d1")
    g.publish(KEY, "d1")
    g.publish(KEY, "d2")
    samples = [s for m in reg.collect() for s in m.samples if s.name == "trt_health_canary_digest_info"]
    assert [(s.labels["digest"], s.value) for s in samples] == [("d2", 1.0)]
    assert samples[0].labels["engine_sha256"] == "ab12" and samples[0].labels["runner"] == "tensorrt"
    g.clear()
    assert not [s for m in reg.collect() for s in m.samples if s.name == "trt_health_canary_digest_info"]
