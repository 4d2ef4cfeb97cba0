"""Plan header peek, version comparison, engines: config parsing, hashing helpers."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sidecar.config import Section
from sidecar.engine.config import parse_engines_config
from sidecar.engine.files import HashTimeout, sha256_file, sha256_file_blocking
from sidecar.engine.plan import (
    compare_versions,
    make_plan_header,
    parse_plan_header,
    read_plan_header,
)
from sidecar.engine.verify import check_compute_capability


def test_synthesized_header_gives_version() -> None:
    """A layout-0 header with version bytes 10,13,0,35 reads back as 10.13.0.35."""
    hdr = parse_plan_header(make_plan_header((10, 13, 0, 35)) + b"\0" * 100)
    assert hdr.is_plan and hdr.layout_known
    assert hdr.tensorrt_version == "10.13.0.35"


def test_wrong_magic_is_not_a_plan() -> None:
    """Bytes that do not start with 'ftrt' are not a plan, and the problem says what was found."""
    hdr = parse_plan_header(b"\x7fELF" + b"\0" * 40)
    assert not hdr.is_plan
    assert hdr.problem is not None and "7f454c46" in hdr.problem


def test_empty_file_is_not_a_plan() -> None:
    """An empty buffer is reported as empty, not as a plan."""
    hdr = parse_plan_header(b"")
    assert not hdr.is_plan and hdr.problem == "file is empty"


def test_unknown_layout_is_inconclusive() -> None:
    """A plan tag with an unknown layout selector yields no version (inconclusive)."""
    hdr = parse_plan_header(make_plan_header((11, 4, 0, 106), layout=3))
    assert hdr.is_plan and not hdr.layout_known and hdr.tensorrt_version is None


def test_truncated_header_has_no_version() -> None:
    """A plan tag followed by too few bytes has no version and names the truncation."""
    hdr = parse_plan_header(make_plan_header((11, 4, 0, 106))[:12])
    assert hdr.is_plan and hdr.tensorrt_version is None and "truncated" in (hdr.problem or "")


def test_ultralytics_wrapper_detected(tmp_path: Path) -> None:
    """int32 length + JSON + plan is recognised as a wrapped plan, with the inner version."""
    meta = json.dumps({"model": "yolo"}).encode()
    f = tmp_path / "m.engine"
    f.write_bytes(struct.pack("<i", len(meta)) + meta + make_plan_header((10, 8, 0, 43)) + b"x")
    hdr = read_plan_header(f)
    assert not hdr.is_plan
    assert hdr.wrapper == "json-metadata" and hdr.tensorrt_version == "10.8.0.43"


@pytest.mark.parametrize(
    ("plan", "runtime", "vc", "expected"),
    [
        ("10.13.0.35", "10.13.0.35", False, True),
        ("10.13.0.35", "10.13.0", False, True),
        ("10.13.0.35", "10.13.1.2", False, False),
        ("10.13.0.35", "11.4.0.106", False, False),
        ("10.13.0.35", "11.4.0.106", True, True),
        ("11.0.0.1", "11.4.0.106", True, True),
        ("11.4.0.106", "11.0.0.1", True, False),
        ("8.6.1.6", "11.4.0.106", True, False),
        ("garbage", "11.4", False, None),
    ],
)
def test_compare_versions(plan: str, runtime: str, vc: bool, expected: bool | None) -> None:
    """Exact match without version compatibility; forward-only rules with it."""
    assert compare_versions(plan, runtime, version_compatible=vc).compatible is expected


@pytest.mark.parametrize(
    ("built", "gpu", "hw", "ok"),
    [
        ("9.0", "9.0", "none", True),
        ("8.9", "9.0", "none", False),
        ("8.0", "9.0", "ampere+", True),
        ("8.0", "7.5", "ampere+", False),
        ("9.0", "9.0", "same-compute-capability", True),
    ],
)
def test_compute_capability(built: str, gpu: str, hw: str, ok: bool) -> None:
    """Compute capability must match unless the plan is hardware-compatible (ampere+)."""
    assert check_compute_capability(built, gpu, hw)[0] is ok


def test_engines_config_defaults_and_errors() -> None:
    """Every bad field of engines: is named; good entries parse with the documented defaults."""
    errors: list[str] = []
    cfg = parse_engines_config(
        Section(
            {
                "list": [
                    {"name": "a", "manifest": "/m/a.yaml"},
                    {"name": "b", "file": "/m/b.plan", "manifest": "/m/b.yaml"},
                    {"name": "a", "file": "/x"},
                    {"file": "/y", "colour": "red"},
                ],
                "watch": "magic",
                "hash_timeout": "0s",
                "compute_capability": "nine",
                "typo": 1,
            },
            "engines",
            errors,
        )
    )
    text = "\n".join(errors)
    assert "engines.list[1].manifest: give exactly one" in text
    assert "engines.list[2].name: duplicate" in text
    assert "engines.list[3].name: required" in text
    assert "engines.list[3].colour: unknown field" in text
    assert "engines.watch: must be one of auto, inotify, poll" in text
    assert "engines.hash_timeout: must be > 0" in text
    assert "engines.compute_capability" in text
    assert "engines.typo: unknown field" in text
    assert cfg.engines[0].manifest == Path("/m/a.yaml")
    ok = parse_engines_config(Section({}, "engines", []))
    assert (ok.watch, ok.poll_interval_s, ok.gate_readiness_after_verified) == ("auto", 2.0, False)


def test_hash_matches_hashlib_and_reports_speed(tmp_path: Path) -> None:
    """The streaming hash equals hashlib's and reports bytes, seconds and MB/s."""
    import hashlib

    data = bytes(range(256)) * 40000
    f = tmp_path / "f.bin"
    f.write_bytes(data)
    res = sha256_file_blocking(f, chunk_bytes=65536)
    assert res.sha256 == hashlib.sha256(data).hexdigest()
    assert res.size == len(data) and res.mb_per_s > 0


async def test_hash_timeout_stops(tmp_path: Path) -> None:
    """A throttled hash past its deadline raises HashTimeout, and only once its thread stopped
    reading, part-way (8 MiB at 1 MB/s would take 8 s: it did not read to the end)."""
    f = tmp_path / "f.bin"
    f.write_bytes(b"\0" * (8 << 20))
    with pytest.raises(HashTimeout) as info:
        await sha256_file(f, timeout_s=0.2, max_bytes_per_s=1e6)
    assert 0 <= info.value.done < 8 << 20
