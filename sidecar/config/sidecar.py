"""The core sections (``grpc``, ``http``, ``policy``, ``liveness``, ``log`` and the top-level
keys), declared once, and :func:`parse_config`, which also reads every component section.

The component sections (``gpu``, ``canary``, ``engines``, ``workload``, ``trends``, ``events``)
are read by their packages' own ``parse_*_config`` functions, through the same error collector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.config import defaults
from sidecar.config.fields import (
    Spec,
    custom,
    duration,
    flag,
    integer,
    number,
    opt_section,
    read,
    section,
    text,
)
from sidecar.config.section import ConfigError, Section
from sidecar.core.policy import PolicyConfig, Thresholds
from sidecar.runtime.safeload import clip

# Upper bounds of the core durations (docs/config.md); every other duration is bounded by
# sidecar.config.section.MAX_DURATION_S unless its section names a tighter one.
MAX_SHUTDOWN_GRACE_S = 600.0
MAX_HEARTBEAT_INTERVAL_S = 60.0
MAX_LOOP_LAG_S = 600.0
MAX_REQUEST_TIMEOUT_S = 3600.0
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")


def port_number(default: int) -> int:
    return integer(default, min=0, max=65535)


def _tls_rules(tls: TlsConfig, sec: Section) -> TlsConfig:
    if not tls.cert_file:
        sec.error("cert_file", "required when grpc.tls is set")
    if not tls.key_file:
        sec.error("key_file", "required when grpc.tls is set")
    if tls.require_client_cert and not tls.client_ca_file:
        sec.error("client_ca_file", "required when require_client_cert is true")
    return tls


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Optional TLS / mTLS listener on its own port; files are re-read when they change."""

    port: int = port_number(defaults.GRPC_TLS_PORT)
    cert_file: str = text()
    key_file: str = text()
    client_ca_file: str = text()  # set => client certificates are verified against it
    require_client_cert: bool = flag(False)


def _grpc_rules(grpc: GrpcConfig, sec: Section) -> GrpcConfig:
    if grpc.tls is not None and grpc.tls.port == grpc.port and grpc.port != 0:
        sec.error("tls.port", f"must differ from grpc.port ({grpc.port})")
    return grpc


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    host: str = text("[::]")
    port: int = port_number(defaults.GRPC_PORT)
    unix_socket: str = text()
    # RPC threads (Check, List, diagnostics); Watch streams hold none
    threads: int = integer(8, min=1, max=256)
    max_watchers: int = integer(1000, min=0)
    list_max_services: int = integer(100, min=1)
    max_service_name_bytes: int = integer(1024, min=1)
    reflection: bool = flag(True)
    tls: TlsConfig | None = opt_section(TlsConfig, check=_tls_rules)


def _at_most_an_hour(seconds: float) -> str | None:
    return None if seconds <= MAX_REQUEST_TIMEOUT_S else "must be a duration of at most 1h"


@dataclass(frozen=True, slots=True)
class HttpConfig:
    enabled: bool = flag(True)
    host: str = text("0.0.0.0")
    port: int = port_number(defaults.HTTP_PORT)
    # beyond: the oldest connection still sending its header is closed
    max_connections: int = integer(256, min=1, max=10_000)
    # a request header must arrive within this
    request_timeout_s: float = duration(5.0, min=0.01, valid=_at_most_an_hour)


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    heartbeat_interval_s: float = duration(1.0, min=0.05, max=MAX_HEARTBEAT_INTERVAL_S)
    # loop lag beyond this => liveness NOT_SERVING
    max_loop_lag_s: float = duration(5.0, min=0.1, max=MAX_LOOP_LAG_S)


# The core's Thresholds carries no declarations (the core imports nothing of the package):
# its keys and bounds are here, its defaults in sidecar.core.policy.
THRESHOLDS: Mapping[str, Spec] = {
    name: Spec("integer", minimum=1)
    for name in ("failure_threshold", "success_threshold", "fatal_recovery_threshold")
}


def _read_policy(sec: Section, key: str, default: PolicyConfig) -> PolicyConfig:
    """``policy:``: the default thresholds, and ``overrides`` (condition-name prefix -> the
    thresholds that differ from them)."""
    p = sec.sub(key)
    p.has("overrides")  # read below, after the defaults it falls back to
    base = read(Thresholds, p, base=default.defaults, specs=THRESHOLDS)
    overrides: dict[str, Thresholds] = {}
    ov = p.sub("overrides")
    for prefix in list(ov.raw):
        if not isinstance(prefix, str) or not prefix:
            ov.error(clip(str(prefix), 80), "a condition-name prefix must be a non-empty string")
            continue
        overrides[prefix] = read(Thresholds, ov.sub(prefix), base=base, specs=THRESHOLDS)
    return PolicyConfig(defaults=base, overrides=overrides)


def _rules(cfg: SidecarConfig, sec: Section) -> SidecarConfig:
    """The rules that span sections: distinct ports, a scenario only with the simulation."""
    grpc, http, tls = cfg.grpc, cfg.http, cfg.grpc.tls
    if http.enabled and http.port == grpc.port and http.port != 0:
        sec.error("http.port", f"must differ from grpc.port ({grpc.port})")
    if http.enabled and tls is not None and tls.port == http.port and tls.port != 0:
        sec.error("grpc.tls.port", f"must differ from http.port ({http.port})")
    if cfg.scenario and not cfg.simulate:
        sec.error("scenario", "needs --simulate (a scenario file only drives the simulation)")
    return cfg


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    grpc: GrpcConfig = section(GrpcConfig, check=_grpc_rules)
    http: HttpConfig = section(HttpConfig)
    policy: PolicyConfig = custom(
        _read_policy,
        keys=("policy", *(f"policy.{k}" for k in THRESHOLDS), "policy.overrides"),
        factory=PolicyConfig,
    )
    liveness: LivenessConfig = section(LivenessConfig)
    jitter: float = number(0.1, min=0.0, max=0.5)  # fraction of each check's interval
    shutdown_grace_s: float = duration(5.0, max=MAX_SHUTDOWN_GRACE_S)
    log_level: str = text("info", key="log.level", choices=LOG_LEVELS)
    log_format: str = text("json", key="log.format", choices=LOG_FORMATS)
    simulate: bool = flag(False)
    scenario: str = text()
    state_dir: str = text(defaults.STATE_DIR)
    engines_dir: str = text()
    config_file: str = ""  # not a key: where the document came from
    # Parsed component sections (objects from each component's parse_*_config).
    components: Mapping[str, Any] = dataclasses.field(default_factory=dict)


ComponentParser = Callable[[Section], Any]


def component_parsers() -> dict[str, ComponentParser]:
    """The parse function of every component section (the component registry's entries,
    which import their modules lazily so `probe` stays light)."""
    from sidecar.components import parsers

    return parsers()


def parse_config(doc: Mapping[str, Any], *, config_file: str = "") -> SidecarConfig:
    """Parse a merged config document. Raises ConfigError with every problem."""
    errors: list[str] = []
    root = Section(doc, "", errors)
    parsers = component_parsers()
    for name in parsers:
        root.has(name)  # a component section, read below
    cfg = read(SidecarConfig, root, check=_rules)
    components = {name: parser(root.sub(name)) for name, parser in parsers.items()}
    if errors:
        raise ConfigError(errors)
    return dataclasses.replace(cfg, config_file=config_file, components=components)
