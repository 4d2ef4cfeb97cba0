"""The ``actions:`` config section: which engines the sidecar may act on, and how.

Off by default, opt-in per engine (``rollback: true`` / ``degrade: true``), with a dry-run mode
that decides and reports but never calls the main server. Every field is documented in
``docs/actions.md``; each is declared once, here (:mod:`sidecar.config.fields`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Section
from sidecar.config.fields import (
    duration,
    flag,
    integer,
    number,
    opt_path,
    opt_text,
    read,
    section,
    sections,
    text,
)

SERVER_KINDS = ("mlserver", "triton")


def _engine_rules(e: EngineActions, sec: Section) -> EngineActions:
    if not e.engine:
        sec.error("engine", "required (a name under engines.list)")
    model = e.model or e.engine
    if "/" in model:
        sec.error("model", f"must be a model name without '/', got {model!r}")
    return dataclasses.replace(e, model=model)


@dataclass(frozen=True, slots=True)
class EngineActions:
    """One engine (a name under ``engines.list``) and the model the main server serves it as."""

    engine: str = text()
    model: str = text()  # "" => the engine's name
    rollback: bool = flag(False)
    degrade: bool = flag(False)
    # the fallback's server version; None: the version the manifest's ``fallback`` engine declares
    fallback_version: str | None = opt_text()


def _rollback_rules(r: RollbackSettings, sec: Section) -> RollbackSettings:
    if 0.0 < r.latency_ratio <= 1.0:
        sec.error("latency_ratio", f"must be 0 (off) or > 1, got {r.latency_ratio:g}")
        r = dataclasses.replace(r, latency_ratio=0.0)
    if r.backoff_max_s < r.backoff_initial_s:
        r = dataclasses.replace(r, backoff_max_s=r.backoff_initial_s)
    return r


@dataclass(frozen=True, slots=True)
class RollbackSettings:
    max_attempts: int = integer(3, min=1, max=100)  # calls for one action before it stops
    backoff_initial_s: float = duration(5.0)
    backoff_max_s: float = duration(300.0)
    flap_window_s: float = duration(3600.0, min=1.0)
    max_rollbacks: int = integer(2, min=1, max=100)  # per engine within flap_window
    latency_ratio: float = number(0.0, min=0.0)  # > 1: this much slower than the previous fails
    latency_min_samples: int = integer(5, min=1)


@dataclass(frozen=True, slots=True)
class DegradeSettings:
    enter_after_s: float = duration(30.0)  # pressure sustained this long switches to the fallback
    restore_after_s: float = duration(300.0)  # pressure gone this long switches back
    min_free_mib: float = number(0.0, min=0.0)  # GPU memory headroom below this (0: off)
    canary_latency: bool = flag(True)  # canary/latency over budget is pressure
    throttling: bool = flag(True)  # thermal / power throttling is pressure
    require_fallback_canary: bool = flag(True)  # canary/engine/<fallback> must have passed


def _rules(cfg: ActionsConfig, sec: Section) -> ActionsConfig:
    seen: set[str] = set()
    for e in cfg.engines:
        if e.engine in seen:
            sec.error("engines", f"duplicate engine {e.engine!r}")
        seen.add(e.engine)
    acting = cfg.enabled and any(e.rollback or e.degrade for e in cfg.engines)
    if acting and not cfg.url:
        sec.error("url", "required when actions are enabled (the main server's HTTP address)")
    if acting and cfg.server == "mlserver" and cfg.repository_dir is None:
        sec.error(
            "repository_dir", "required for MLServer: its load API loads every version under the repository"
        )
    return dataclasses.replace(cfg, url=cfg.url.rstrip("/"))


@dataclass(frozen=True, slots=True)
class ActionsConfig:
    enabled: bool = flag(False)
    dry_run: bool = flag(False)
    server: str = text("mlserver", choices=SERVER_KINDS)
    url: str = text()
    timeout_s: float = duration(10.0, min=0.01)
    repository_dir: Path | None = opt_path()  # MLServer: the repository as mounted here
    interval_s: float = duration(1.0, min=0.05)
    engines: tuple[EngineActions, ...] = sections(EngineActions, check=_engine_rules)
    rollback: RollbackSettings = section(RollbackSettings, check=_rollback_rules)
    degrade: DegradeSettings = section(DegradeSettings)


def parse_actions_config(sec: Section) -> ActionsConfig:
    """Read the ``actions:`` section; every problem is recorded on ``sec`` naming its field."""
    return read(ActionsConfig, sec, check=_rules)
