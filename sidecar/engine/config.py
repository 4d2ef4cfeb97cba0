"""The ``engines:`` config section (engine files to verify, hashing and watching settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Section
from sidecar.engine.manifest import FORMATS
from sidecar.engine.watch import WATCH_MODES


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine to verify: by its manifest (full checks) or by its bare file (presence,
    stability and plan header only). ``format`` None means: from the manifest, else from the
    file suffix (``.onnx`` is ONNX, anything else a TensorRT plan)."""

    name: str
    manifest: Path | None = None
    file: Path | None = None
    format: str | None = None
    check_memory: bool = True


@dataclass(frozen=True, slots=True)
class EnginesConfig:
    """Defaults are documented in ``engines/README.md``."""

    engines: tuple[EngineSpec, ...] = ()
    hash_timeout_s: float = 600.0
    hash_min_interval_s: float = 1.0
    rehash_interval_s: float = 3600.0
    hash_max_mb_per_s: float = 0.0
    watch: str = "auto"
    poll_interval_s: float = 2.0
    check_interval_s: float = 30.0
    stable_window_s: float = 0.5
    gate_readiness_after_verified: bool = False
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    last_good_dir: Path | None = None


def _cc_ok(text: str) -> bool:
    major, dot, minor = text.partition(".")
    return bool(dot) and major.isdigit() and minor.isdigit()


def parse_engines_config(sec: Section) -> EnginesConfig:
    """Read the ``engines:`` section; every problem is recorded on ``sec`` naming its field."""
    specs: list[EngineSpec] = []
    seen: set[str] = set()
    for item in sec.sub_list("list"):
        name = item.text("name", "")
        if not name:
            item.error("name", "required")
        elif "/" in name or name.strip() != name:
            item.error("name", f"must not contain '/' or surrounding spaces, got {name!r}")
        elif name in seen:
            item.error("name", f"duplicate engine name {name!r}")
        seen.add(name)
        manifest = item.opt_text("manifest")
        file = item.opt_text("file")
        if (manifest is None) == (file is None):
            item.error("manifest", "give exactly one of 'manifest' or 'file'")
        fmt = item.opt_text("format")
        if fmt is not None and fmt not in FORMATS:
            item.error("format", f"must be one of {', '.join(FORMATS)}; got {fmt!r}")
            fmt = None
        check_memory = item.flag("check_memory", True)
        item.reject_unknown()
        specs.append(
            EngineSpec(
                name=name,
                manifest=Path(manifest) if manifest else None,
                file=Path(file) if file else None,
                format=fmt,
                check_memory=check_memory,
            )
        )
    hash_timeout = sec.duration("hash_timeout", 600.0)
    if hash_timeout <= 0:
        sec.error("hash_timeout", "must be > 0")
        hash_timeout = 600.0
    poll = sec.duration("poll_interval", 2.0)
    if poll <= 0:
        sec.error("poll_interval", "must be > 0")
        poll = 2.0
    interval = sec.duration("check_interval", 30.0)
    if interval <= 0:
        sec.error("check_interval", "must be > 0")
        interval = 30.0
    cc = sec.opt_text("compute_capability")
    if cc is not None and not _cc_ok(cc):
        sec.error("compute_capability", f"must look like '9.0', got {cc!r}")
        cc = None
    last_good = sec.opt_text("last_good_dir")
    cfg = EnginesConfig(
        engines=tuple(specs),
        hash_timeout_s=hash_timeout,
        hash_min_interval_s=sec.duration("hash_min_interval", 1.0),
        rehash_interval_s=sec.duration("rehash_interval", 3600.0),
        hash_max_mb_per_s=sec.number("hash_max_mb_per_s", 0.0, minimum=0.0),
        watch=sec.text("watch", "auto", choices=WATCH_MODES),
        poll_interval_s=poll,
        check_interval_s=interval,
        stable_window_s=sec.duration("stable_window", 0.5),
        gate_readiness_after_verified=sec.flag("gate_readiness_after_verified", False),
        tensorrt_version=sec.opt_text("tensorrt_version"),
        compute_capability=cc,
        last_good_dir=Path(last_good) if last_good else None,
    )
    sec.reject_unknown()
    return cfg
