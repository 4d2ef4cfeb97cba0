"""The engine metrics (``trt_health_engine_*``), registered on the registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.engine.files import HashResult

__all__ = ["EngineMetrics"]


class EngineMetrics:
    """Verification outcomes, file size, hashing cost, changes seen and the watch mode."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["engine"]
        self.verified = Gauge(
            "trt_health_engine_verified",
            "1 when the engine file passed every check at its last verification",
            labels,
            registry=registry,
        )
        self.size = Gauge("trt_health_engine_size_bytes", "Engine file size", labels, registry=registry)
        self.hash_seconds = Gauge(
            "trt_health_engine_hash_seconds",
            "Wall time of the last full SHA-256 of the engine file",
            labels,
            registry=registry,
        )
        self.hash_rate = Gauge(
            "trt_health_engine_hash_bytes_per_second",
            "Throughput of the last full SHA-256 of the engine file",
            labels,
            registry=registry,
        )
        self.hash_cost = Gauge(
            "trt_health_engine_hash_seconds_per_gigabyte",
            "Cost of hashing: seconds per GB (1e9 bytes) at the last full SHA-256",
            labels,
            registry=registry,
        )
        self.changes = Counter(
            "trt_health_engine_changes",
            "Changes of the engine or manifest file seen on the volume",
            labels,
            registry=registry,
        )
        self.verifications = Counter(
            "trt_health_engine_verifications",
            "Engine verifications by outcome",
            [*labels, "outcome"],
            registry=registry,
        )
        self.reverify = Gauge(
            "trt_health_engine_reverify_seconds",
            "From a change seen by the watcher to the finished re-verification",
            labels,
            registry=registry,
        )
        self.watch = Gauge(
            "trt_health_engine_watch_mode",
            "1 for the change-detection mode in use (inotify or poll)",
            ["mode"],
            registry=registry,
        )

    def hashed(self, engine: str, res: HashResult) -> None:
        self.hash_seconds.labels(engine=engine).set(res.seconds)
        self.hash_rate.labels(engine=engine).set(res.mb_per_s * 1e6)
        self.hash_cost.labels(engine=engine).set(res.seconds_per_gb)

    def verification(self, engine: str, ok: bool, reverify_s: float | None) -> None:
        self.verified.labels(engine=engine).set(1 if ok else 0)
        self.verifications.labels(engine=engine, outcome="ok" if ok else "failed").inc()
        if reverify_s is not None:
            self.reverify.labels(engine=engine).set(reverify_s)
