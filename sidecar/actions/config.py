"""The ``actions:`` config section: which engines the sidecar may act on, and how.

Off by default, opt-in per engine (``rollback: true`` / ``degrade: true``), with a dry-run mode
that decides and reports but never calls the main server. Every field is documented in
``docs/actions.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Section

SERVER_KINDS = ("mlserver", "triton")


@dataclass(frozen=True, slots=True)
class EngineActions:
    """One engine (a name under ``engines.list``) and the model the main server serves it as."""

    engine: str
    model: str
    rollback: bool = False
    degrade: bool = False
    # the fallback's server version; None: the version the manifest's ``fallback`` engine declares
    fallback_version: str | None = None


@dataclass(frozen=True, slots=True)
class RollbackSettings:
    max_attempts: int = 3  # calls for one rollback before it stops and reports
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 300.0
    flap_window_s: float = 3600.0
    max_rollbacks: int = 2  # per engine within flap_window; the next one stops and reports
    latency_ratio: float = 0.0  # > 1: a new version this much slower than the previous one fails
    latency_min_samples: int = 5


@dataclass(frozen=True, slots=True)
class DegradeSettings:
    enter_after_s: float = 30.0  # pressure sustained this long switches to the fallback
    restore_after_s: float = 300.0  # pressure gone this long switches back (hysteresis)
    min_free_mib: float = 0.0  # GPU memory headroom below this is pressure (0: not a signal)
    canary_latency: bool = True  # canary/latency over budget is pressure
    throttling: bool = True  # thermal / power throttling (GPU thermal, trends cause) is pressure
    require_fallback_canary: bool = True  # the fallback's own canary/engine/<name> must have passed


@dataclass(frozen=True, slots=True)
class ActionsConfig:
    enabled: bool = False
    dry_run: bool = False
    server: str = "mlserver"
    url: str = ""
    timeout_s: float = 10.0
    repository_dir: Path | None = None  # MLServer: the model repository as this container sees it
    interval_s: float = 1.0
    engines: tuple[EngineActions, ...] = ()
    rollback: RollbackSettings = RollbackSettings()
    degrade: DegradeSettings = DegradeSettings()


def _rollback(sec: Section) -> RollbackSettings:
    d = RollbackSettings()
    ratio = sec.number("latency_ratio", d.latency_ratio, minimum=0.0)
    if 0.0 < ratio <= 1.0:
        sec.error("latency_ratio", f"must be 0 (off) or > 1, got {ratio:g}")
        ratio = d.latency_ratio
    initial = sec.duration("backoff_initial", d.backoff_initial_s, minimum=0.0)
    out = RollbackSettings(
        max_attempts=sec.integer("max_attempts", d.max_attempts, minimum=1, maximum=100),
        backoff_initial_s=initial,
        backoff_max_s=max(initial, sec.duration("backoff_max", d.backoff_max_s, minimum=0.0)),
        flap_window_s=sec.duration("flap_window", d.flap_window_s, minimum=1.0),
        max_rollbacks=sec.integer("max_rollbacks", d.max_rollbacks, minimum=1, maximum=100),
        latency_ratio=ratio,
        latency_min_samples=sec.integer("latency_min_samples", d.latency_min_samples, minimum=1),
    )
    sec.reject_unknown()
    return out


def _degrade(sec: Section) -> DegradeSettings:
    d = DegradeSettings()
    out = DegradeSettings(
        enter_after_s=sec.duration("enter_after", d.enter_after_s),
        restore_after_s=sec.duration("restore_after", d.restore_after_s),
        min_free_mib=sec.number("min_free_mib", d.min_free_mib, minimum=0.0),
        canary_latency=sec.flag("canary_latency", d.canary_latency),
        throttling=sec.flag("throttling", d.throttling),
        require_fallback_canary=sec.flag("require_fallback_canary", d.require_fallback_canary),
    )
    sec.reject_unknown()
    return out


def parse_actions_config(sec: Section) -> ActionsConfig:
    """Read the ``actions:`` section; every problem is recorded on ``sec`` naming its field."""
    d = ActionsConfig()
    engines: list[EngineActions] = []
    seen: set[str] = set()
    for item in sec.sub_list("engines"):
        engine = item.text("engine", "")
        if not engine:
            item.error("engine", "required (a name under engines.list)")
        elif engine in seen:
            item.error("engine", f"duplicate engine {engine!r}")
        seen.add(engine)
        model = item.text("model", engine)
        if not model or "/" in model:
            item.error("model", f"must be a model name without '/', got {model!r}")
        engines.append(
            EngineActions(
                engine=engine,
                model=model,
                rollback=item.flag("rollback", False),
                degrade=item.flag("degrade", False),
                fallback_version=item.opt_text("fallback_version"),
            )
        )
        item.reject_unknown()
    enabled = sec.flag("enabled", d.enabled)
    server = sec.text("server", d.server, choices=SERVER_KINDS)
    url = sec.text("url", d.url)
    repo = sec.opt_text("repository_dir")
    if enabled and engines and not url:
        sec.error("url", "required when actions are enabled (the main server's HTTP address)")
    if enabled and server == "mlserver" and any(e.rollback or e.degrade for e in engines) and not repo:
        sec.error(
            "repository_dir",
            "required for MLServer: its load API loads every version under the repository",
        )
    cfg = ActionsConfig(
        enabled=enabled,
        dry_run=sec.flag("dry_run", d.dry_run),
        server=server,
        url=url.rstrip("/"),
        timeout_s=sec.duration("timeout", d.timeout_s, minimum=0.01),
        repository_dir=Path(repo) if repo else None,
        interval_s=sec.duration("interval", d.interval_s, minimum=0.05),
        engines=tuple(engines),
        rollback=_rollback(sec.sub("rollback")),
        degrade=_degrade(sec.sub("degrade")),
    )
    sec.reject_unknown()
    return cfg
