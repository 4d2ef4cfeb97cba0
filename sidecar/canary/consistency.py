"""Replica consistency: a digest of the canary's exact output, and its comparison with peers.

No I/O (:class:`DigestGauge` is the metric). Two replicas are comparable only when everything
that changes the exact bits of the output is equal: the runner, the engine file (sha256), the
GPU model, the driver, CUDA and TensorRT versions, and the input (the golden input's sha256).
That tuple is the :class:`DigestKey`. It is exported as the labels of
``trt_health_canary_digest_info``, so that Prometheus compares digests only within one key
(manifests/monitoring/trt-health.rules.yaml), and a direct peer comparison
(:func:`compare_with_peers`) compares only peers with an equal key.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Gauge

DIGEST_HEX = 16  # 64 bits of sha256: plenty to tell outputs apart, short as a label value


@dataclass(frozen=True, slots=True)
class DigestKey:
    """What must be equal for two canary digests to be comparable."""

    runner: str
    engine_sha256: str = ""
    gpu_model: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    tensorrt_version: str = ""
    input_sha256: str = ""

    def labels(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


LABELS = tuple(DigestKey.__dataclass_fields__)


def output_digest(outputs: Mapping[str, np.ndarray]) -> str:
    """A short hex digest of the exact output: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(outputs):
        a = np.ascontiguousarray(outputs[name])
        h.update(name.encode())
        h.update(b"\0" + a.dtype.str.encode() + b"\0" + repr(a.shape).encode() + b"\0")
        h.update(a.tobytes())
    return h.hexdigest()[:DIGEST_HEX]


def input_digest(inputs: Mapping[str, np.ndarray]) -> str:
    """The same digest over the canary's input (the golden input), for :class:`DigestKey`."""
    return output_digest(inputs)


@dataclass(frozen=True, slots=True)
class PeerReport:
    """One peer's answer: its key and digest, or why it could not be asked."""

    address: str
    key: DigestKey | None = None
    digest: str = ""
    error: str = ""


@dataclass(frozen=True, slots=True)
class PeerVerdict:
    """The outcome of comparing our digest with the comparable peers.

    ``outlier`` is True when at least ``min_peers`` comparable peers answered and our digest is
    shared by fewer than half of all comparable digests (ours included)."""

    comparable: int  # peers with our key that answered
    agreeing: int  # of those, how many have our digest
    majority_digest: str
    outlier: bool
    skipped: tuple[str, ...]  # "address: why" for peers not compared

    @property
    def agreement(self) -> float:
        return (self.agreeing + 1) / (self.comparable + 1)


def compare_with_peers(
    key: DigestKey, digest: str, peers: Iterable[PeerReport], *, min_peers: int = 2
) -> PeerVerdict:
    """Compare our digest with the peers that share our key (pure)."""
    counts: Counter[str] = Counter({digest: 1})
    skipped: list[str] = []
    comparable = agreeing = 0
    for p in peers:
        if p.error:
            skipped.append(f"{p.address}: {p.error}")
        elif p.key != key:
            skipped.append(f"{p.address}: different key")
        elif not p.digest:
            skipped.append(f"{p.address}: no digest yet")
        else:
            comparable += 1
            agreeing += p.digest == digest
            counts[p.digest] += 1
    majority, _ = max(counts.items(), key=lambda kv: (kv[1], kv[0] == digest))
    outlier = comparable >= min_peers and (agreeing + 1) * 2 < comparable + 1
    return PeerVerdict(comparable, agreeing, majority, outlier, tuple(skipped))


class DigestGauge:
    """``trt_health_canary_digest_info``: one series per pod (the key's labels and the digest,
    value 1); a new digest or key replaces the old series, so the cardinality stays one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauge = Gauge(
            "trt_health_canary_digest_info",
            "Digest of the canary's exact output (value 1), labelled with what must be equal for "
            "two replicas to agree; compared across pods by the rule pack (CanaryDigestOutlier)",
            [*LABELS, "digest"],
            registry=registry,
        )
        self.current: tuple[str, ...] | None = None

    def publish(self, key: DigestKey, digest: str) -> None:
        values = (*(key.labels()[name] for name in LABELS), digest)
        if values == self.current:
            return
        if self.current is not None:
            self.gauge.remove(*self.current)
        self.gauge.labels(*values).set(1)
        self.current = values

    def clear(self) -> None:
        if self.current is not None:
            self.gauge.remove(*self.current)
            self.current = None


def report_from_labels(address: str, labels: Mapping[str, str]) -> PeerReport:
    """A peer's report from the labels of its ``canary`` condition (Diagnostics RPC)."""
    digest = labels.get("digest", "")
    if not digest:
        return PeerReport(address, error="no canary digest yet")
    return PeerReport(address, DigestKey(**{k: labels.get(k, "") for k in LABELS}), digest)
