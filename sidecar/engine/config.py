"""The ``engines:`` config section (engine files to verify, hashing and watching settings),
declared once: :class:`EnginesConfig` and :func:`parse_engines_config`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Section
from sidecar.config.fields import duration, flag, number, opt_path, opt_text, read, sections, text
from sidecar.engine.manifest import FORMATS
from sidecar.runtime.watch import WATCH_MODES


def _known_format(fmt: str) -> str | None:
    return None if fmt in FORMATS else f"must be one of {', '.join(FORMATS)}; got {fmt!r}"


def _name_rules(name: str) -> str | None:
    if not name:
        return "required"
    if "/" in name or name.strip() != name:
        return f"must not contain '/' or surrounding spaces, got {name!r}"
    return None


def _spec_rules(spec: EngineSpec, sec: Section) -> EngineSpec:
    problem = _name_rules(spec.name)
    if problem is not None:
        sec.error("name", problem)
    if isinstance(sec.raw.get("manifest"), str) == isinstance(sec.raw.get("file"), str):
        sec.error("manifest", "give exactly one of 'manifest' or 'file'")
    return spec


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """One engine to verify: by its manifest (full checks) or by its bare file (presence,
    stability and plan header only). ``format`` None means: from the manifest, else from the
    file suffix (``.onnx`` is ONNX, anything else a TensorRT plan)."""

    name: str = text()
    manifest: Path | None = opt_path()
    file: Path | None = opt_path()
    format: str | None = opt_text(valid=_known_format)
    check_memory: bool = flag(True)


def _cc_ok(text: str) -> str | None:
    major, dot, minor = text.partition(".")
    return None if dot and major.isdigit() and minor.isdigit() else f"must look like '9.0', got {text!r}"


def _unique_names(cfg: EnginesConfig, sec: Section) -> EnginesConfig:
    seen: set[str] = set()
    for i, spec in enumerate(cfg.engines):
        if _name_rules(spec.name) is None and spec.name in seen:
            sec.error(f"list[{i}].name", f"duplicate engine name {spec.name!r}")
        seen.add(spec.name)
    return cfg


@dataclass(frozen=True, slots=True)
class EnginesConfig:
    """Durations in seconds; docs/config.md and ``engines/README.md`` say what each does."""

    engines: tuple[EngineSpec, ...] = sections(EngineSpec, key="list", check=_spec_rules)
    hash_timeout_s: float = duration(600.0, above=0)
    hash_min_interval_s: float = duration(1.0)
    rehash_interval_s: float = duration(3600.0)
    hash_max_mb_per_s: float = number(0.0, min=0.0)
    watch: str = text("auto", choices=WATCH_MODES)
    poll_interval_s: float = duration(2.0, above=0)
    check_interval_s: float = duration(30.0, above=0)
    stable_window_s: float = duration(0.5)
    gate_readiness_after_verified: bool = flag(False)
    tensorrt_version: str | None = opt_text()
    compute_capability: str | None = opt_text(valid=_cc_ok)
    last_good_dir: Path | None = opt_path()


def parse_engines_config(sec: Section) -> EnginesConfig:
    """Read the ``engines:`` section; every problem is recorded on ``sec`` naming its field."""
    return read(EnginesConfig, sec, check=_unique_names)
