"""The ``canary:`` config section, declared once: :class:`CanaryConfig` and
:func:`parse_canary_config`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.canary import sdc
from sidecar.config import Section
from sidecar.config.fields import (
    custom,
    duration,
    flag,
    int_list,
    integer,
    number,
    opt_number,
    opt_path,
    read,
    section,
    text,
)

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
class TensorCoreConfig:
    """The ``canary.tensor_core:`` section."""

    blocks_per_sm: int = integer(8, min=1, max=64)
    # test-only; also needs TRT_HEALTH_SDC_FAULT_INJECTION=1 (see parse_canary_config)
    allow_fault_injection: bool = flag(False)
    # simulation only: the numpy model of the kernel with this many SMs
    simulated_sms: int = integer(0, min=0, max=1024)


@dataclass(frozen=True, slots=True)
class ProductionEngineConfig:
    """One engine the canary verifies against its manifest's goldens (its own
    ``canary/engine/<name>``): the primary, or a fallback verified in advance
    (``release_after_verify``: its GPU memory given back once it passed)."""

    manifest: Path
    memory_budget_mib: float
    release_after_verify: bool = False


def _engine_entry(p: Section) -> ProductionEngineConfig | None:
    """One ``{manifest: PATH, memory_budget_mib: N, release_after_verify: false}``: ``manifest``
    and ``memory_budget_mib`` are required (errors recorded on ``p``)."""
    manifest = p.opt_text("manifest")
    if not manifest:
        p.error("manifest", "required")
    mib = p.number("memory_budget_mib", 0.0, minimum=0.0)
    if not p.has("memory_budget_mib"):
        p.error("memory_budget_mib", "required: the GPU memory the production engine may take")
    release = p.flag("release_after_verify", False)
    p.reject_unknown()
    return ProductionEngineConfig(Path(manifest), mib, release) if manifest else None


def _production_engine(
    sec: Section, key: str, default: ProductionEngineConfig | None
) -> ProductionEngineConfig | None:
    """``production_engine: {manifest: PATH, memory_budget_mib: N, release_after_verify: false}``:
    absent is None; given, ``manifest`` and ``memory_budget_mib`` are required."""
    if not sec.has(key):
        return default
    return _engine_entry(sec.sub(key))


def _production_engines(
    sec: Section, key: str, default: tuple[ProductionEngineConfig, ...]
) -> tuple[ProductionEngineConfig, ...]:
    """``production_engines: [{manifest, memory_budget_mib, release_after_verify}, ...]``: each
    entry as ``production_engine``; one manifest once."""
    if not sec.has(key):
        return default
    out: list[ProductionEngineConfig] = []
    seen: dict[Path, int] = {}
    for i, item in enumerate(sec.sub_list(key)):
        entry = _engine_entry(item)
        if entry is None:
            continue
        first = seen.setdefault(entry.manifest, i)
        if first != i:
            item.error("manifest", f"{entry.manifest} is already entry [{first}]")
            continue
        out.append(entry)
    return tuple(out)


def _ordinals(devices: tuple[int, ...]) -> str | None:
    return f"CUDA ordinals must be >= 0, got {list(devices)}" if any(x < 0 for x in devices) else None


@dataclass(frozen=True, slots=True)
class CanaryConfig:
    """The ``canary:`` config section (durations in seconds; docs/config.md says what each does)."""

    enabled: bool = flag(True)
    runner: str = text("auto", choices=RUNNERS)
    interval_s: float = duration(5.0)  # floor: MIN_INTERVAL_S, or FAST_MIN_INTERVAL_S (see _rules)
    allow_fast_interval: bool = flag(False)
    timeout_s: float = duration(5.0, min=0.001)
    first_timeout_s: float = duration(60.0, min=0.001)
    load_timeout_s: float = duration(120.0, min=0.001)
    max_skip_s: float = duration(60.0)
    latency_budget_ms: float | None = opt_number(min=0.0)
    latency_gates_readiness: bool = flag(False)
    recovery_passes: int = integer(3, min=1, max=100)
    backoff_initial_s: float = duration(1.0, key="restart_backoff_initial")
    backoff_max_s: float = duration(60.0, key="restart_backoff_max")
    manifest: Path | None = opt_path()
    tensorrt_manifest: Path | None = opt_path()
    production_engine: ProductionEngineConfig | None = custom(_production_engine, default=None)
    production_engines: tuple[ProductionEngineConfig, ...] = custom(_production_engines, default=())
    allow_engine_host_code: bool = flag(False)
    devices: tuple[int, ...] = int_list(valid=_ordinals)
    warmup_runs: int = integer(2, min=0, max=100)
    mps: bool = flag(False)
    mps_min_interval_s: float = duration(MPS_MIN_INTERVAL_S, min=MIN_INTERVAL_S)
    rss_growth_warn_mib: float = number(256.0, min=0.0)
    worker_max_rss_mib: float = number(4096.0, min=1.0)
    tensor_core: TensorCoreConfig = section(TensorCoreConfig)
    determinism_check: bool = flag(True)

    @property
    def engines(self) -> tuple[ProductionEngineConfig, ...]:
        """Every production engine the canary verifies: ``production_engines``, or the one
        ``production_engine`` (the one-entry form)."""
        if self.production_engines:
            return self.production_engines
        return (self.production_engine,) if self.production_engine is not None else ()


def parse_canary_config(sec: Section, env: Mapping[str, str] | None = None) -> CanaryConfig:
    """Read the ``canary:`` section; every bad field is recorded on ``sec`` by name.

    ``interval`` below 1 s is an error unless ``allow_fast_interval: true``: a canary's cost to
    a busy GPU is ~0 % at 1 s but ~2.6 % at 10 ms (measured), and 10 ms is the hard floor.
    ``tensor_core.allow_fault_injection: true`` is an error unless the environment also says
    ``TRT_HEALTH_SDC_FAULT_INJECTION=1`` (two switches, never one).
    """
    environ = os.environ if env is None else env

    def rules(cfg: CanaryConfig, sec: Section) -> CanaryConfig:
        d = CanaryConfig()
        floor = FAST_MIN_INTERVAL_S if cfg.allow_fast_interval else MIN_INTERVAL_S
        if cfg.interval_s < floor:
            hint = (
                ""
                if cfg.allow_fast_interval
                else " (set allow_fast_interval: true to go lower; costs GPU time)"
            )
            sec.error("interval", f"must be >= {floor:g}s, got {cfg.interval_s:g}s{hint}")
            cfg = dataclasses.replace(cfg, interval_s=d.interval_s)
        if cfg.backoff_max_s < cfg.backoff_initial_s:
            sec.error(
                "restart_backoff_max", f"must be >= restart_backoff_initial ({cfg.backoff_initial_s:g}s)"
            )
            cfg = dataclasses.replace(cfg, backoff_max_s=cfg.backoff_initial_s)
        if cfg.production_engine is not None and cfg.production_engines:
            sec.error(
                "production_engines",
                "give production_engine (one engine) or production_engines (a list), not both",
            )
            cfg = dataclasses.replace(cfg, production_engine=None)
        if cfg.tensor_core.allow_fault_injection and environ.get(sdc.INJECTION_ENV) != "1":
            sec.error(
                "tensor_core.allow_fault_injection",
                f"test-only: refused unless the environment also sets {sdc.INJECTION_ENV}=1",
            )
            tc = dataclasses.replace(cfg.tensor_core, allow_fault_injection=False)
            cfg = dataclasses.replace(cfg, tensor_core=tc)
        return cfg

    return read(CanaryConfig, sec, check=rules)
