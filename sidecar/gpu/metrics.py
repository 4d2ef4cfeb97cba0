"""Prometheus metrics of the GPU layer, all created on the registry passed in."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sidecar.gpu.backend import (
    EccCounters,
    GpuInfo,
    GpuSample,
    MemoryInfo,
    RemappedRows,
    SystemInfo,
    value_or_none,
)


class GpuMetrics:
    """Every ``trt_health_gpu_*`` / ``trt_health_nvml_*`` metric."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.info = Gauge(
            "trt_health_gpu_info",
            "GPU identity (value 1)",
            ["uuid", "index", "name", "pci_bus_id", "driver", "mig", "backend"],
            registry=r,
        )
        self.ecc = Gauge(
            "trt_health_gpu_ecc_errors",
            "ECC error counters as NVML reports them (volatile resets with the driver)",
            ["uuid", "counter", "type"],
            registry=r,
        )
        self.remapped_rows = Gauge(
            "trt_health_gpu_remapped_rows", "Rows remapped", ["uuid", "type"], registry=r
        )
        self.remap_pending = Gauge(
            "trt_health_gpu_remap_pending", "1 when a row remap is pending", ["uuid"], registry=r
        )
        self.remap_failure = Gauge(
            "trt_health_gpu_remap_failure", "1 when row remapping failed", ["uuid"], registry=r
        )
        self.xid = Counter(
            "trt_health_gpu_xid_events",
            "Xid events received, by code and class",
            ["uuid", "code", "class"],
            registry=r,
        )
        self.xid_ignored = Counter(
            "trt_health_gpu_xid_events_ignored",
            "Xid events of MIG instances that are not this pod's",
            ["uuid", "code"],
            registry=r,
        )
        self.ecc_events = Counter(
            "trt_health_gpu_ecc_events",
            "Single- / double-bit ECC events received",
            ["uuid", "type"],
            registry=r,
        )
        self.temperature = Gauge(
            "trt_health_gpu_temperature_celsius", "GPU temperature", ["uuid"], registry=r
        )
        self.temperature_threshold = Gauge(
            "trt_health_gpu_temperature_threshold_celsius",
            "Temperature thresholds in force",
            ["uuid", "threshold"],
            registry=r,
        )
        self.memory_total = Gauge(
            "trt_health_gpu_memory_total_bytes", "Framebuffer total", ["uuid"], registry=r
        )
        self.memory_used = Gauge(
            "trt_health_gpu_memory_used_bytes",
            "Framebuffer used by all processes",
            ["uuid"],
            registry=r,
        )
        self.memory_free = Gauge(
            "trt_health_gpu_memory_free_bytes", "Framebuffer free", ["uuid"], registry=r
        )
        self.recovery_action = Gauge(
            "trt_health_gpu_recovery_action",
            "NVML GPU recovery action (0 none, 1 gpu_reset, 2 node_reboot, 3 drain_p2p, "
            "4 drain_and_reset, 5 recover_imex_domain, 6 bus_reset, 7 system_reboot)",
            ["uuid"],
            registry=r,
        )
        self.processes = Gauge(
            "trt_health_gpu_processes", "Compute processes on the GPU", ["uuid"], registry=r
        )
        self.utilization = Gauge(
            "trt_health_gpu_utilization_ratio", "GPU utilisation (0-1)", ["uuid"], registry=r
        )
        self.pcie_replays = Gauge(
            "trt_health_gpu_pcie_replays", "PCIe replay counter", ["uuid"], registry=r
        )
        self.clock_reasons = Gauge(
            "trt_health_gpu_clock_event_reasons", "Clock event reasons bitmask", ["uuid"], registry=r
        )
        self.compute_mode = Gauge(
            "trt_health_gpu_compute_mode",
            "Compute mode (0 default, 2 prohibited, 3 exclusive_process)",
            ["uuid"],
            registry=r,
        )
        self.monitored = Gauge(
            "trt_health_gpu_signal_monitored",
            "1 when the signal is readable, 0 when unsupported (unmonitored) or failing",
            ["uuid", "signal"],
            registry=r,
        )
        self.fatal_latches = Gauge(
            "trt_health_gpu_fatal_latches",
            "Sticky fatal findings waiting for evidence of a reset",
            ["uuid"],
            registry=r,
        )
        self.resets = Counter(
            "trt_health_gpu_resets_observed",
            "GPU resets observed (counters cleared, recovery action back to none)",
            ["uuid"],
            registry=r,
        )
        self.nvml_up = Gauge(
            "trt_health_nvml_up", "1 when NVML answers, 0 when unavailable or hung", registry=r
        )
        self.nvml_call_seconds = Histogram(
            "trt_health_nvml_call_seconds",
            "Duration of backend calls (one sample reads every signal of one GPU)",
            ["op"],
            buckets=(1e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.nvml_hung = Counter(
            "trt_health_nvml_calls_hung",
            "Backend calls that exceeded nvml_call_timeout",
            ["op"],
            registry=r,
        )

    def remove_gpu(self, uuid: str) -> None:
        """Drop every series labelled with ``uuid`` (the GPU left the inventory)."""
        for metric in (m for m in vars(self).values() if isinstance(m, Gauge | Counter)):
            names: tuple[str, ...] = tuple(metric._labelnames)
            if "uuid" not in names:
                continue
            keys = {
                tuple(sample.labels[n] for n in names)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("uuid") == uuid
            }
            for key in keys:
                with contextlib.suppress(KeyError):
                    metric.remove(*key)

    def observe_call(self, op: str, seconds: float) -> None:
        self.nvml_call_seconds.labels(op=op).observe(seconds)

    def gpu_info(self, info: GpuInfo, system: SystemInfo | None, backend: str) -> None:
        self.info.labels(
            uuid=info.uuid,
            index=str(info.index),
            name=info.name,
            pci_bus_id=info.pci_bus_id,
            driver=system.driver_version if system else "",
            mig=str(info.mig_enabled).lower(),
            backend=backend,
        ).set(1)

    def sample(self, s: GpuSample) -> None:
        u = s.info.uuid
        for signal in (
            "ecc",
            "remap",
            "recovery_action",
            "memory",
            "temperature_c",
            "clock_event_reasons",
            "compute_mode",
            "utilization_gpu_pct",
            "pcie_replay_count",
            "processes",
        ):
            ok = value_or_none(getattr(s, signal)) is not None
            self.monitored.labels(uuid=u, signal=signal).set(1 if ok else 0)
        ecc = value_or_none(s.ecc)
        if isinstance(ecc, EccCounters):
            for counter, kind, value in (
                ("volatile", "corrected", ecc.volatile_corrected),
                ("volatile", "uncorrected", ecc.volatile_uncorrected),
                ("aggregate", "corrected", ecc.aggregate_corrected),
                ("aggregate", "uncorrected", ecc.aggregate_uncorrected),
            ):
                if value is not None:
                    self.ecc.labels(uuid=u, counter=counter, type=kind).set(value)
        remap = value_or_none(s.remap)
        if isinstance(remap, RemappedRows):
            self.remapped_rows.labels(uuid=u, type="correctable").set(remap.correctable)
            self.remapped_rows.labels(uuid=u, type="uncorrectable").set(remap.uncorrectable)
            self.remap_pending.labels(uuid=u).set(int(remap.pending))
            self.remap_failure.labels(uuid=u).set(int(remap.failure))
        mem = value_or_none(s.memory)
        if isinstance(mem, MemoryInfo):
            self.memory_total.labels(uuid=u).set(mem.total)
            self.memory_used.labels(uuid=u).set(mem.used)
            self.memory_free.labels(uuid=u).set(mem.free)
        simple: list[tuple[Gauge, object, float]] = [
            (self.temperature, s.temperature_c, 1.0),
            (self.recovery_action, s.recovery_action, 1.0),
            (self.utilization, s.utilization_gpu_pct, 0.01),
            (self.pcie_replays, s.pcie_replay_count, 1.0),
            (self.clock_reasons, s.clock_event_reasons, 1.0),
            (self.compute_mode, s.compute_mode, 1.0),
        ]
        for gauge, reading, scale in simple:
            if isinstance(reading, int) and not isinstance(reading, bool):
                gauge.labels(uuid=u).set(reading * scale)
        for name, reading in (
            ("slowdown", s.slowdown_threshold_c),
            ("shutdown", s.shutdown_threshold_c),
        ):
            if isinstance(reading, int):
                self.temperature_threshold.labels(uuid=u, threshold=name).set(reading)
        procs = value_or_none(s.processes)
        if isinstance(procs, tuple):
            self.processes.labels(uuid=u).set(len(procs))
