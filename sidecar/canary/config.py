"""The ``canary:`` config section: :class:`CanaryConfig` and :func:`parse_canary_config`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.canary import sdc
from sidecar.config import Section


@dataclass(frozen=True, slots=True)
class TensorCoreConfig:
    """The ``canary.tensor_core:`` section."""

    blocks_per_sm: int = 8
    allow_fault_injection: bool = False  # test-only; also needs TRT_HEALTH_SDC_FAULT_INJECTION=1
    simulated_sms: int = 0  # simulation only: the numpy model of the kernel with this many SMs


def parse_tensor_core(sec: Section, env: dict[str, str]) -> TensorCoreConfig:
    """Read ``canary.tensor_core``; ``allow_fault_injection: true`` is an error unless the
    environment also says ``TRT_HEALTH_SDC_FAULT_INJECTION=1`` (two switches, never one)."""
    d = TensorCoreConfig()
    bps = sec.integer("blocks_per_sm", d.blocks_per_sm, minimum=1, maximum=64)
    inject = sec.flag("allow_fault_injection", d.allow_fault_injection)
    if inject and env.get(sdc.INJECTION_ENV) != "1":
        sec.error(
            "allow_fault_injection",
            f"test-only: refused unless the environment also sets {sdc.INJECTION_ENV}=1",
        )
        inject = False
    sims = sec.integer("simulated_sms", d.simulated_sms, minimum=0, maximum=1024)
    sec.reject_unknown()
    return TensorCoreConfig(blocks_per_sm=bps, allow_fault_injection=inject, simulated_sms=sims)


RUNNERS = ("auto", "onnxruntime", "cuda-kernel", "tensorrt", "tensor-core")

# Minimum canary period. Measured on an H200 next to a bf16 matmul loop: a kernel canary every
# 1 s cost the busy GPU ~0 %, every 100 ms ~0.3 %, every 10 ms ~2.6 % (context switches between
# processes). Periods under 1 s are refused unless `allow_fast_interval: true`; even then
# 10 ms is the floor.
MIN_INTERVAL_S = 1.0
FAST_MIN_INTERVAL_S = 0.01
# Under MPS a fault in one client reaches every client of that GPU, so the canary is rarer.
MPS_MIN_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class ProductionEngineConfig:
    manifest: Path
    memory_budget_mib: float
    release_after_verify: bool = False


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """The ``canary:`` config section (durations in seconds). See :func:`parse_canary_config`."""

    enabled: bool = True
    runner: str = "auto"
    interval_s: float = 5.0
    allow_fast_interval: bool = False
    timeout_s: float = 5.0
    first_timeout_s: float = 60.0
    load_timeout_s: float = 120.0
    max_skip_s: float = 60.0
    latency_budget_ms: float | None = None
    latency_gates_readiness: bool = False
    recovery_passes: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    manifest: Path | None = None
    tensorrt_manifest: Path | None = None
    production_engine: ProductionEngineConfig | None = None
    allow_engine_host_code: bool = False
    devices: tuple[int, ...] = ()
    warmup_runs: int = 2
    mps: bool = False
    mps_min_interval_s: float = MPS_MIN_INTERVAL_S
    rss_growth_warn_mib: float = 256.0
    worker_max_rss_mib: float = 4096.0
    tensor_core: TensorCoreConfig = dataclasses.field(default_factory=TensorCoreConfig)
    determinism_check: bool = True


def parse_canary_config(sec: Section, env: Mapping[str, str] | None = None) -> CanaryConfig:
    """Read the ``canary:`` section; every bad field is recorded on ``sec`` by name.

    ``interval`` below 1 s is an error unless ``allow_fast_interval: true``: a canary's cost to
    a busy GPU is ~0 % at 1 s but ~2.6 % at 10 ms (measured), and 10 ms is the hard floor.
    """
    d = CanaryConfig()
    enabled = sec.flag("enabled", d.enabled)
    runner = sec.text("runner", d.runner, choices=RUNNERS)
    fast = sec.flag("allow_fast_interval", d.allow_fast_interval)
    interval = sec.duration("interval", d.interval_s, minimum=0.0)
    floor = FAST_MIN_INTERVAL_S if fast else MIN_INTERVAL_S
    if interval < floor:
        hint = "" if fast else " (set allow_fast_interval: true to go lower; costs GPU time)"
        sec.error("interval", f"must be >= {floor:g}s, got {interval:g}s{hint}")
        interval = d.interval_s
    timeout = sec.duration("timeout", d.timeout_s, minimum=0.001)
    first_timeout = sec.duration("first_timeout", d.first_timeout_s, minimum=0.001)
    load_timeout = sec.duration("load_timeout", d.load_timeout_s, minimum=0.001)
    max_skip = sec.duration("max_skip", d.max_skip_s, minimum=0.0)
    budget = sec.number("latency_budget_ms", 0.0, minimum=0.0) if sec.has("latency_budget_ms") else None
    gates_latency = sec.flag("latency_gates_readiness", d.latency_gates_readiness)
    recovery = sec.integer("recovery_passes", d.recovery_passes, minimum=1, maximum=100)
    b_init = sec.duration("restart_backoff_initial", d.backoff_initial_s, minimum=0.0)
    b_max = sec.duration("restart_backoff_max", d.backoff_max_s, minimum=0.0)
    if b_max < b_init:
        sec.error("restart_backoff_max", f"must be >= restart_backoff_initial ({b_init:g}s)")
        b_max = b_init
    manifest = sec.opt_text("manifest")
    trt_manifest = sec.opt_text("tensorrt_manifest")
    production: ProductionEngineConfig | None = None
    if sec.has("production_engine"):
        p = sec.sub("production_engine")
        pm = p.opt_text("manifest")
        if not pm:
            p.error("manifest", "required")
        mib = p.number("memory_budget_mib", 0.0, minimum=0.0)
        if not p.has("memory_budget_mib"):
            p.error("memory_budget_mib", "required: the GPU memory the production engine may take")
        rel = p.flag("release_after_verify", False)
        p.reject_unknown()
        if pm:
            production = ProductionEngineConfig(Path(pm), mib, rel)
    host_code = sec.flag("allow_engine_host_code", d.allow_engine_host_code)
    devices = tuple(sec.int_list("devices"))
    if any(x < 0 for x in devices):
        sec.error("devices", f"CUDA ordinals must be >= 0, got {list(devices)}")
        devices = ()
    warmup = sec.integer("warmup_runs", d.warmup_runs, minimum=0, maximum=100)
    mps = sec.flag("mps", d.mps)
    mps_min = sec.duration("mps_min_interval", d.mps_min_interval_s, minimum=MIN_INTERVAL_S)
    growth = sec.number("rss_growth_warn_mib", d.rss_growth_warn_mib, minimum=0.0)
    max_rss = sec.number("worker_max_rss_mib", d.worker_max_rss_mib, minimum=1.0)
    tensor_core = parse_tensor_core(sec.sub("tensor_core"), dict(os.environ if env is None else env))
    determinism = sec.flag("determinism_check", d.determinism_check)
    sec.reject_unknown()
    return CanaryConfig(
        enabled=enabled,
        runner=runner,
        interval_s=interval,
        allow_fast_interval=fast,
        timeout_s=timeout,
        first_timeout_s=first_timeout,
        load_timeout_s=load_timeout,
        max_skip_s=max_skip,
        latency_budget_ms=budget,
        latency_gates_readiness=gates_latency,
        recovery_passes=recovery,
        backoff_initial_s=b_init,
        backoff_max_s=b_max,
        manifest=Path(manifest) if manifest else None,
        tensorrt_manifest=Path(trt_manifest) if trt_manifest else None,
        production_engine=production,
        allow_engine_host_code=host_code,
        devices=devices,
        warmup_runs=warmup,
        mps=mps,
        mps_min_interval_s=mps_min,
        rss_growth_warn_mib=growth,
        worker_max_rss_mib=max_rss,
        tensor_core=tensor_core,
        determinism_check=determinism,
    )
