"""Xid classification table, overrides, reasons, and the gpu: config section."""

from __future__ import annotations

import pytest

from sidecar.config import Section
from sidecar.gpu.config import GpuConfig, parse_gpu_config
from sidecar.gpu.xid import XidClass, XidTable, parse_xid_class, xid_reason


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (79, XidClass.NODE_FATAL),
        (48, XidClass.GPU_FATAL),
        (95, XidClass.GPU_FATAL),
        (109, XidClass.GPU_FATAL),
        (119, XidClass.GPU_FATAL),
        (120, XidClass.GPU_FATAL),
        (64, XidClass.GPU_FATAL),
        (94, XidClass.PROCESS),
        (13, XidClass.PROCESS),
        (31, XidClass.PROCESS),
        (43, XidClass.PROCESS),
        (45, XidClass.INFO),
        (154, XidClass.INFO),
        (63, XidClass.WARNING),
        (92, XidClass.WARNING),
        (74, XidClass.NVLINK),
        (999, XidClass.UNKNOWN),
        (12345, XidClass.UNKNOWN),
    ],
)
def test_catalogue_classes(code: int, cls: XidClass) -> None:
    """Each Xid gets the class of the catalogue's immediate action."""
    assert XidTable().classify(code) is cls


def test_override_wins_over_catalogue() -> None:
    """A config override changes the class of a listed Xid only."""
    table = XidTable({31: XidClass.GPU_FATAL, 79: XidClass.IGNORE})
    assert table.classify(31) is XidClass.GPU_FATAL
    assert table.classify(79) is XidClass.IGNORE
    assert table.classify(48) is XidClass.GPU_FATAL


def test_reasons_are_camel_case_with_code() -> None:
    """Reasons name the class and the code."""
    assert xid_reason(79, XidClass.NODE_FATAL) == "XidFatal79"
    assert xid_reason(48, XidClass.GPU_FATAL) == "XidGpuReset48"
    assert xid_reason(31, XidClass.PROCESS) == "XidProcess31"
    assert xid_reason(999, XidClass.UNKNOWN) == "XidUnknown999"


def test_parse_xid_class_names() -> None:
    """Class names accept dashes / case; a wrong one lists the valid names."""
    assert parse_xid_class("GPU-fatal") is XidClass.GPU_FATAL
    with pytest.raises(ValueError, match="node_fatal"):
        parse_xid_class("deadly")


def test_gpu_config_defaults() -> None:
    """An empty gpu: section gives the documented defaults and no errors."""
    errors: list[str] = []
    cfg = parse_gpu_config(Section({}, "gpu", errors))
    assert errors == []
    assert cfg == GpuConfig()
    assert cfg.poll_interval_s == 5.0 and cfg.event_wait_timeout_s == 0.2
    assert cfg.nvml_call_timeout_s == 2.0 and cfg.state_file == "gpu-latches.json"


def test_gpu_config_values() -> None:
    """Durations, lists, overrides and thresholds are read."""
    errors: list[str] = []
    cfg = parse_gpu_config(
        Section(
            {
                "poll_interval": "500ms",
                "nvml_call_timeout": "1s",
                "expected_uuids": "GPU-a,GPU-b",
                "expected_count": 2,
                "multi_gpu_model": True,
                "xid_overrides": {31: "gpu_fatal", "109": "process"},
                "thermal_shutdown_c": 90,
            },
            "gpu",
            errors,
        )
    )
    assert errors == []
    assert cfg.poll_interval_s == 0.5 and cfg.nvml_call_timeout_s == 1.0
    assert cfg.expected_uuids == ("GPU-a", "GPU-b") and cfg.expected_count == 2
    assert cfg.multi_gpu_model
    assert cfg.xid_overrides == {31: XidClass.GPU_FATAL, 109: XidClass.PROCESS}
    assert cfg.thermal_shutdown_c == 90.0 and cfg.thermal_slowdown_c is None


def test_gpu_config_errors_name_fields() -> None:
    """Every bad key is reported with its field path, all at once."""
    errors: list[str] = []
    parse_gpu_config(
        Section(
            {
                "poll_interval": "5 seconds",
                "xid_overrides": {"abc": "process", 31: "deadly"},
                "state_file": "../x.json",
                "pol_interval": 1,
            },
            "gpu",
            errors,
        )
    )
    text = "\n".join(errors)
    assert "gpu.poll_interval:" in text
    assert "gpu.xid_overrides.abc:" in text
    assert "gpu.xid_overrides.31:" in text
    assert "gpu.state_file:" in text
    assert "gpu.pol_interval: unknown field" in text
