"""The canary's Prometheus metrics: the worker and its verdicts, and the tensor-core SDC screen.

Every metric is created on the registry passed in (a reload builds a staged set on its own
registry), never on the global default.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class CanaryMetrics:
    """The canary's metrics, all on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.worker_gpu_memory = Gauge(
            "trt_health_canary_worker_gpu_memory_bytes",
            "GPU memory held by the canary worker process, as the worker measured it (NVML)",
            ["gpu"],
            registry=registry,
        )
        self.worker_rss = Gauge(
            "trt_health_canary_worker_rss_bytes",
            "Resident memory of the canary worker process",
            registry=registry,
        )
        self.worker_startup = Gauge(
            "trt_health_canary_worker_startup_seconds",
            "Seconds from spawning the worker to its runner being loaded (last start)",
            registry=registry,
        )
        self.latency = Histogram(
            "trt_health_canary_latency_seconds",
            "Canary inference latency, warm-up excluded",
            ["runner"],
            buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
            registry=registry,
        )
        self.results = Counter(
            "trt_health_canary_results_total",
            "Canary outcomes: pass, mismatch, error, timeout, crashed, skipped, unmonitored",
            ["outcome"],
            registry=registry,
        )
        self.restarts = Counter(
            "trt_health_canary_worker_restarts_total",
            "Canary worker replacements by cause (signal, exit code, CUDA error, timeout ...)",
            ["cause"],
            registry=registry,
        )
        self.max_abs_error = Gauge(
            "trt_health_canary_max_abs_error",
            "Largest absolute difference from the golden output in the last canary",
            registry=registry,
        )


class SdcMetrics:
    """The tensor-core SDC screen's metrics (one series per GPU UUID, bounded)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sms_covered = Gauge(
            "trt_health_sdc_sms_covered",
            "Distinct SMs that ran tensor-core MMA work in the last SDC round",
            ["gpu"],
            registry=registry,
        )
        self.sms = Gauge(
            "trt_health_sdc_sms", "SMs of the GPU (the coverage target)", ["gpu"], registry=registry
        )
        self.rounds = Counter(
            "trt_health_sdc_rounds_total",
            "Tensor-core SDC rounds judged, by outcome (pass, mismatch, invalid)",
            ["gpu", "outcome"],
            registry=registry,
        )
        self.round_us = Gauge(
            "trt_health_sdc_round_microseconds",
            "Device round trip of the last SDC round (copies, launches, sync), microseconds",
            ["gpu"],
            registry=registry,
        )
        self.sm_seconds_per_hour = Gauge(
            "trt_health_sdc_sm_seconds_screened_per_hour",
            "SMs covered x device seconds per round x rounds per hour at the current cadence",
            ["gpu"],
            registry=registry,
        )
        self.mismatched_elements = Counter(
            "trt_health_sdc_mismatched_elements_total",
            "Tensor-core result elements that differed from the CPU golden",
            ["gpu"],
            registry=registry,
        )
