"""The ``trends:`` config section, declared once: :class:`TrendsConfig` and
:func:`parse_trends_config`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.config import Section
from sidecar.config.fields import Spec, custom, duration, flag, in_state_dir, key_of, read, section, text
from sidecar.trends.detectors import CounterSettings, DriftSettings

# The detectors' settings carry no declarations (they are the detectors' own parameters): their
# keys and bounds are here, their defaults in sidecar.trends.detectors.
DRIFT: Mapping[str, Spec] = {
    "warmup": Spec("integer", minimum=5),
    "k": Spec("number", minimum=0.01),
    "h": Spec("number", minimum=0.1),
    "clip": Spec("number", minimum=0.1),
    "min_rel_shift": Spec("number", minimum=0, maximum=10),
}
COUNTER: Mapping[str, Spec] = {
    "window_s": Spec("duration", minimum=60.0),
    "min_span_s": Spec("duration", minimum=1.0),
    "rate_per_hour": Spec("number", minimum=0.001),
    "fatal_threshold": Spec("number", minimum=0, optional=True),
    "forecast_horizon_s": Spec("duration", minimum=60.0),
}
# counter kind -> its defaults
COUNTER_DEFAULTS: Mapping[str, CounterSettings] = {
    "ecc_corrected": CounterSettings(rate_per_hour=10.0),
    "remapped_rows": CounterSettings(rate_per_hour=1.0, window_s=24 * 3600.0),
    "pcie_replays": CounterSettings(rate_per_hour=60.0, window_s=3600.0),
}

# what _counters reads: each kind, and each setting of it
COUNTER_KEYS = tuple(
    key
    for kind in COUNTER_DEFAULTS
    for key in (kind, *(f"{kind}.{key_of(n, s)}" for n, s in COUNTER.items()))
)


def _counters(
    sec: Section, key: str, default: Mapping[str, CounterSettings]
) -> Mapping[str, CounterSettings]:
    """One sub-mapping per counter kind (``ecc_corrected: {rate_per_hour: 10}``)."""
    return {
        kind: read(CounterSettings, sec.sub(kind), base=base, specs=COUNTER) for kind, base in default.items()
    }


@dataclass(frozen=True, slots=True)
class TrendsConfig:
    """The ``trends:`` config section (durations in seconds; docs/config.md says what each does)."""

    enabled: bool = flag(True)
    interval_s: float = duration(5.0, min=0.05)
    gates_readiness: bool = flag(False)
    persist_interval_s: float = duration(60.0, min=1.0)
    state_file: str = text("trends.json", valid=in_state_dir)
    latency: DriftSettings = section(DriftSettings, specs=DRIFT)
    # off by default: a host-timed canary latency is not stationary enough on a busy host (see
    # docs/trends.md: the H200 round-trip trace and the CI runs gave false warnings)
    latency_enabled: bool = flag(False, key="latency.enabled")
    counters: Mapping[str, CounterSettings] = custom(
        _counters, keys=COUNTER_KEYS, factory=lambda: dict(COUNTER_DEFAULTS)
    )


def parse_trends_config(sec: Section) -> TrendsConfig:
    """Read the ``trends:`` section; every problem is recorded on ``sec`` naming its field."""
    return read(TrendsConfig, sec)
