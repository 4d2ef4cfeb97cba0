"""The ``gpu:`` config section: :class:`GpuConfig` and :func:`parse_gpu_config`."""

from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.config import Section
from sidecar.gpu.xid import XidClass, parse_xid_class


@dataclass(frozen=True, slots=True)
class GpuConfig:
    """The ``gpu:`` config section (see :func:`parse_gpu_config` for keys and defaults)."""

    enabled: bool = True
    poll_interval_s: float = 5.0
    nvml_call_timeout_s: float = 2.0
    event_wait_timeout_s: float = 0.2
    events: bool = True
    expected_uuids: tuple[str, ...] = ()
    expected_count: int | None = None
    multi_gpu_model: bool = False
    multi_node_nvlink: bool = False
    xid_overrides: dict[int, XidClass] = field(default_factory=dict)
    xid_report_window_s: float = 300.0
    ecc_xid_window_s: float = 5.0
    ecc_corrected_warn: int = 100
    ecc_corrected_window_s: float = 3600.0
    thermal_slowdown_c: float | None = None
    thermal_shutdown_c: float | None = None
    thermal_sustain_s: float = 30.0
    pcie_replay_warn: int = 8
    pcie_replay_window_s: float = 60.0
    inforom_interval_s: float = 600.0
    busy_utilization_pct: float = 90.0
    required_memory_mib: int = 640
    state_file: str = "gpu-latches.json"


def parse_gpu_config(sec: Section) -> GpuConfig:
    """Read the ``gpu:`` section; every problem is recorded on ``sec`` naming its field."""
    d = GpuConfig()
    overrides: dict[int, XidClass] = {}
    sec_over = sec.sub("xid_overrides")
    for key, value in sec_over.raw.items():
        try:
            code = int(key)
            if code < 0:
                raise ValueError
        except (TypeError, ValueError):
            sec_over.error(str(key), "must be an Xid code (a non-negative integer)")
            continue
        try:
            overrides[code] = parse_xid_class(str(value))
        except ValueError as exc:
            sec_over.error(str(key), str(exc))
    expected_count: int | None = None
    if sec.has("expected_count"):
        expected_count = sec.integer("expected_count", 0, minimum=0)
    thermal_slowdown = sec.number("thermal_slowdown_c", 0.0) if sec.has("thermal_slowdown_c") else None
    thermal_shutdown = sec.number("thermal_shutdown_c", 0.0) if sec.has("thermal_shutdown_c") else None
    state_file = sec.text("state_file", d.state_file)
    if "/" in state_file or state_file in ("", ".", ".."):
        sec.error("state_file", f"must be a file name inside state_dir, got {state_file!r}")
        state_file = d.state_file
    cfg = GpuConfig(
        enabled=sec.flag("enabled", d.enabled),
        poll_interval_s=sec.duration("poll_interval", d.poll_interval_s, minimum=0.01, maximum=3600.0),
        nvml_call_timeout_s=sec.duration(
            "nvml_call_timeout", d.nvml_call_timeout_s, minimum=0.001, maximum=600.0
        ),
        event_wait_timeout_s=sec.duration(
            "event_wait_timeout", d.event_wait_timeout_s, minimum=0.001, maximum=10.0
        ),
        events=sec.flag("events", d.events),
        expected_uuids=tuple(sec.text_list("expected_uuids")),
        expected_count=expected_count,
        multi_gpu_model=sec.flag("multi_gpu_model", d.multi_gpu_model),
        multi_node_nvlink=sec.flag("multi_node_nvlink", d.multi_node_nvlink),
        xid_overrides=overrides,
        xid_report_window_s=sec.duration("xid_report_window", d.xid_report_window_s),
        ecc_xid_window_s=sec.duration("ecc_xid_window", d.ecc_xid_window_s),
        ecc_corrected_warn=sec.integer("ecc_corrected_warn", d.ecc_corrected_warn, minimum=0),
        ecc_corrected_window_s=sec.duration("ecc_corrected_window", d.ecc_corrected_window_s, minimum=1.0),
        thermal_slowdown_c=thermal_slowdown,
        thermal_shutdown_c=thermal_shutdown,
        thermal_sustain_s=sec.duration("thermal_sustain", d.thermal_sustain_s),
        pcie_replay_warn=sec.integer("pcie_replay_warn", d.pcie_replay_warn, minimum=0),
        pcie_replay_window_s=sec.duration("pcie_replay_window", d.pcie_replay_window_s, minimum=1.0),
        inforom_interval_s=sec.duration("inforom_interval", d.inforom_interval_s, minimum=1.0),
        busy_utilization_pct=sec.number(
            "busy_utilization_pct", d.busy_utilization_pct, minimum=0, maximum=100
        ),
        required_memory_mib=sec.integer("required_memory_mib", d.required_memory_mib, minimum=0),
        state_file=state_file,
    )
    sec.reject_unknown()
    return cfg
