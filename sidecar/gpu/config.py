"""The ``gpu:`` config section, declared once: :class:`GpuConfig` and :func:`parse_gpu_config`."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.config import Section
from sidecar.config.fields import (
    custom,
    duration,
    flag,
    in_state_dir,
    integer,
    number,
    opt_integer,
    opt_number,
    read,
    text,
    text_list,
)
from sidecar.gpu.xid import XidClass, parse_xid_class


def _xid_overrides(sec: Section, key: str, default: dict[int, XidClass]) -> dict[int, XidClass]:
    """``xid_overrides``: Xid code -> class name (``gpu_fatal``, ``process``, ...)."""
    overrides: dict[int, XidClass] = {}
    sub = sec.sub(key)
    for code_key, value in sub.raw.items():
        try:
            code = int(code_key)
            if code < 0:
                raise ValueError
        except (TypeError, ValueError):
            sub.error(str(code_key), "must be an Xid code (a non-negative integer)")
            continue
        try:
            overrides[code] = parse_xid_class(str(value))
        except ValueError as exc:
            sub.error(str(code_key), str(exc))
    return overrides


@dataclass(frozen=True, slots=True)
class GpuConfig:
    """The ``gpu:`` config section (durations in seconds; docs/config.md says what each does)."""

    enabled: bool = flag(True)
    poll_interval_s: float = duration(5.0, min=0.01, max=3600.0)
    nvml_call_timeout_s: float = duration(2.0, min=0.001, max=600.0)
    event_wait_timeout_s: float = duration(0.2, min=0.001, max=10.0)
    events: bool = flag(True)
    expected_uuids: tuple[str, ...] = text_list()
    expected_count: int | None = opt_integer(min=0)
    multi_gpu_model: bool = flag(False)
    multi_node_nvlink: bool = flag(False)
    xid_overrides: dict[int, XidClass] = custom(_xid_overrides, factory=dict)
    xid_report_window_s: float = duration(300.0)
    ecc_xid_window_s: float = duration(5.0)
    ecc_corrected_warn: int = integer(100, min=0)
    ecc_corrected_window_s: float = duration(3600.0, min=1.0)
    thermal_slowdown_c: float | None = opt_number()
    thermal_shutdown_c: float | None = opt_number()
    thermal_sustain_s: float = duration(30.0)
    pcie_replay_warn: int = integer(8, min=0)
    pcie_replay_window_s: float = duration(60.0, min=1.0)
    inforom_interval_s: float = duration(600.0, min=1.0)
    busy_utilization_pct: float = number(90.0, min=0, max=100)
    required_memory_mib: int = integer(640, min=0)
    state_file: str = text("gpu-latches.json", valid=in_state_dir)


def parse_gpu_config(sec: Section) -> GpuConfig:
    """Read the ``gpu:`` section; every problem is recorded on ``sec`` naming its field."""
    return read(GpuConfig, sec)
