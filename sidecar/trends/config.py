"""The ``trends:`` config section: :class:`TrendsConfig` and :func:`parse_trends_config`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from sidecar.config import Section
from sidecar.trends.detectors import CounterSettings, DriftSettings


@dataclass(frozen=True, slots=True)
class TrendsConfig:
    """The ``trends:`` config section (see :func:`parse_trends_config`)."""

    enabled: bool = True
    interval_s: float = 5.0
    gates_readiness: bool = False
    persist_interval_s: float = 60.0
    state_file: str = "trends.json"
    latency: DriftSettings = field(default_factory=DriftSettings)
    # off by default: a host-timed canary latency is not stationary enough on a busy host (see
    # docs/trends.md: the H200 round-trip trace and the CI runs gave false warnings)
    latency_enabled: bool = False
    counters: Mapping[str, CounterSettings] = field(
        default_factory=lambda: {
            "ecc_corrected": CounterSettings(rate_per_hour=10.0),
            "remapped_rows": CounterSettings(rate_per_hour=1.0, window_s=24 * 3600.0),
            "pcie_replays": CounterSettings(rate_per_hour=60.0, window_s=3600.0),
        }
    )


def _parse_counter(sec: Section, default: CounterSettings) -> CounterSettings:
    threshold = sec.number("fatal_threshold", 0.0, minimum=0) if sec.has("fatal_threshold") else None
    out = CounterSettings(
        window_s=sec.duration("window", default.window_s, minimum=60.0),
        min_span_s=sec.duration("min_span", default.min_span_s, minimum=1.0),
        rate_per_hour=sec.number("rate_per_hour", default.rate_per_hour, minimum=0.001),
        fatal_threshold=threshold if threshold is not None else default.fatal_threshold,
        forecast_horizon_s=sec.duration("forecast_horizon", default.forecast_horizon_s, minimum=60.0),
        max_points=default.max_points,
    )
    sec.reject_unknown()
    return out


def parse_trends_config(sec: Section) -> TrendsConfig:
    """Read the ``trends:`` section; every problem is recorded on ``sec`` naming its field."""
    d = TrendsConfig()
    lat = sec.sub("latency")
    dl = d.latency
    latency = DriftSettings(
        warmup=lat.integer("warmup", dl.warmup, minimum=5),
        k=lat.number("k", dl.k, minimum=0.01),
        h=lat.number("h", dl.h, minimum=0.1),
        clip=lat.number("clip", dl.clip, minimum=0.1),
        min_rel_shift=lat.number("min_rel_shift", dl.min_rel_shift, minimum=0, maximum=10),
        min_rel_sigma=dl.min_rel_sigma,
    )
    latency_enabled = lat.flag("enabled", d.latency_enabled)
    lat.reject_unknown()
    counters = {kind: _parse_counter(sec.sub(kind), default) for kind, default in d.counters.items()}
    state_file = sec.text("state_file", d.state_file)
    if "/" in state_file or state_file in ("", ".", ".."):
        sec.error("state_file", f"must be a file name inside state_dir, got {state_file!r}")
        state_file = d.state_file
    cfg = TrendsConfig(
        enabled=sec.flag("enabled", d.enabled),
        interval_s=sec.duration("interval", d.interval_s, minimum=0.05),
        gates_readiness=sec.flag("gates_readiness", d.gates_readiness),
        persist_interval_s=sec.duration("persist_interval", d.persist_interval_s, minimum=1.0),
        state_file=state_file,
        latency=latency,
        latency_enabled=latency_enabled,
        counters=counters,
    )
    sec.reject_unknown()
    return cfg
