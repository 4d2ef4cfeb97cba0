"""Typed configuration: YAML file + environment + flags (flags win), every error at once.

Precedence (lowest first): built-in defaults, the YAML file (``--config`` or
``TRT_HEALTH_CONFIG``), environment variables, command-line flags.

Environment variables:

- the named ones: ``TRT_HEALTH_GRPC_PORT``, ``TRT_HEALTH_HTTP_PORT``, ``TRT_HEALTH_SIMULATE``,
  ``TRT_HEALTH_SCENARIO``, ``TRT_HEALTH_STATE_DIR``, ``TRT_HEALTH_LOG_LEVEL``;
- any field by path with double underscores: ``TRT_HEALTH__gpu__poll_interval=2s`` sets
  ``gpu.poll_interval`` (values are parsed as YAML scalars, so ``true``/``5``/``2s`` work).

The component sections (``gpu``, ``canary``, ``engines``, ``workload``, ``events``) are parsed by
their components' own ``parse_*_config`` functions, through the same error collector.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar import defaults
from sidecar.configfields import ConfigError, Section
from sidecar.core.policy import PolicyConfig, Thresholds
from sidecar.runtime.safeload import (
    MAX_CONFIG_BYTES,
    UnsafeDocumentError,
    clip,
    load_yaml_bounded,
    read_bounded,
)


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Optional TLS / mTLS listener on its own port; files are re-read when they change."""

    port: int = defaults.GRPC_TLS_PORT
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""  # set => client certificates are verified against it
    require_client_cert: bool = False


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    host: str = "[::]"
    port: int = defaults.GRPC_PORT
    unix_socket: str = ""
    threads: int = 8  # RPC threads (Check, List, diagnostics); Watch streams hold none
    max_watchers: int = 1000
    list_max_services: int = 100
    max_service_name_bytes: int = 1024
    reflection: bool = True
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class HttpConfig:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = defaults.HTTP_PORT
    max_connections: int = 256  # beyond: the oldest still sending its header is closed
    request_timeout_s: float = 5.0  # a request header must arrive within this


@dataclass(frozen=True, slots=True)
class LivenessConfig:
    heartbeat_interval_s: float = 1.0
    max_loop_lag_s: float = 5.0  # loop lag beyond this => liveness NOT_SERVING


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    grpc: GrpcConfig = GrpcConfig()
    http: HttpConfig = HttpConfig()
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    liveness: LivenessConfig = LivenessConfig()
    jitter: float = 0.1  # fraction of each check's interval
    shutdown_grace_s: float = 5.0
    log_level: str = "info"
    log_format: str = "json"
    simulate: bool = False
    scenario: str = ""
    state_dir: str = defaults.STATE_DIR
    engines_dir: str = ""
    config_file: str = ""
    # Parsed component sections (objects from each component's parse_*_config).
    components: Mapping[str, Any] = field(default_factory=dict)


ComponentParser = Callable[[Section], Any]

# Upper bounds of the core durations (docs/config.md); every other duration is bounded by
# sidecar.configfields.MAX_DURATION_S unless its section names a tighter one.
MAX_SHUTDOWN_GRACE_S = 600.0
MAX_HEARTBEAT_INTERVAL_S = 60.0
MAX_LOOP_LAG_S = 600.0


# section name -> (module, parse function); imported lazily so `probe` stays light
_COMPONENT_PARSERS = {
    "gpu": ("sidecar.gpu.config", "parse_gpu_config"),
    "canary": ("sidecar.canary.config", "parse_canary_config"),
    "engines": ("sidecar.engine.config", "parse_engines_config"),
    "workload": ("sidecar.workload.config", "parse_workload_config"),
    "trends": ("sidecar.trends.config", "parse_trends_config"),
    "events": ("sidecar.publish.events_config", "parse_events_config"),
}


def component_parsers() -> dict[str, ComponentParser]:
    """The parse function of every component section."""
    parsers: dict[str, ComponentParser] = {}
    for section, (module, function) in _COMPONENT_PARSERS.items():
        parsers[section] = getattr(importlib.import_module(module), function)
    return parsers


_NAMED_ENV = {
    "GRPC_PORT": ("grpc", "port"),
    "HTTP_PORT": ("http", "port"),
    "SIMULATE": ("simulate",),
    "SCENARIO": ("scenario",),
    "STATE_DIR": ("state_dir",),
    "LOG_LEVEL": ("log", "level"),
}


def _set_path(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    cur = doc
    for key in path[:-1]:
        nxt = cur.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[key] = nxt
        cur = nxt
    cur[path[-1]] = value


def _scalar(text: str, where: str) -> Any:
    try:
        return load_yaml_bounded(text, where)
    except UnsafeDocumentError:
        return text


def apply_env(doc: dict[str, Any], env: Mapping[str, str], errors: list[str] | None = None) -> None:
    """Merge ``TRT_HEALTH_*`` variables into ``doc``; a malformed name is recorded in
    ``errors`` (raised as ConfigError when no list is given)."""
    prefix = defaults.ENV_PREFIX
    problems: list[str] = []
    for key, value in env.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if rest in _NAMED_ENV:
            _set_path(doc, _NAMED_ENV[rest], _scalar(value, key))
        elif rest.startswith("_") and len(rest) > 1:
            path = tuple(rest[1:].split("__"))
            if not all(path):
                problems.append(
                    f"environment {clip(key, 120)}: empty path segment"
                    " (fields are joined by exactly two underscores)"
                )
                continue
            _set_path(doc, path, _scalar(value, key))
    if problems and errors is None:
        raise ConfigError(problems)
    if errors is not None:
        errors.extend(problems)


def read_config_file(path: str) -> dict[str, Any]:
    """Read the YAML file (bounded: size, nesting, aliases); raises ConfigError naming it."""
    try:
        text = read_bounded(path, MAX_CONFIG_BYTES)
        doc = load_yaml_bounded(text, path)
    except OSError as exc:
        raise ConfigError([f"config file {path}: {exc.strerror or exc}"]) from exc
    except UnsafeDocumentError as exc:
        raise ConfigError([f"config file {exc}"]) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError([f"config file {path}: top level must be a mapping"])
    return doc


def _thresholds(sec: Section, base: Thresholds) -> Thresholds:
    return Thresholds(
        failure_threshold=sec.integer("failure_threshold", base.failure_threshold, minimum=1),
        success_threshold=sec.integer("success_threshold", base.success_threshold, minimum=1),
        fatal_recovery_threshold=sec.integer(
            "fatal_recovery_threshold", base.fatal_recovery_threshold, minimum=1
        ),
    )


def _port(sec: Section, key: str, default: int) -> int:
    return sec.integer(key, default, minimum=0, maximum=65535)


def parse_config(doc: Mapping[str, Any], *, config_file: str = "") -> SidecarConfig:
    """Parse a merged config document. Raises ConfigError with every problem."""
    errors: list[str] = []
    root = Section(doc, "", errors)

    g = root.sub("grpc")
    tls: TlsConfig | None = None
    if g.has("tls"):
        t = g.sub("tls")
        tls = TlsConfig(
            port=_port(t, "port", defaults.GRPC_TLS_PORT),
            cert_file=t.text("cert_file", ""),
            key_file=t.text("key_file", ""),
            client_ca_file=t.text("client_ca_file", ""),
            require_client_cert=t.flag("require_client_cert", False),
        )
        if not tls.cert_file:
            t.error("cert_file", "required when grpc.tls is set")
        if not tls.key_file:
            t.error("key_file", "required when grpc.tls is set")
        if tls.require_client_cert and not tls.client_ca_file:
            t.error("client_ca_file", "required when require_client_cert is true")
        t.reject_unknown()
    grpc_cfg = GrpcConfig(
        host=g.text("host", "[::]"),
        port=_port(g, "port", defaults.GRPC_PORT),
        unix_socket=g.text("unix_socket", ""),
        threads=g.integer("threads", 8, minimum=1, maximum=256),
        max_watchers=g.integer("max_watchers", 1000, minimum=0),
        list_max_services=g.integer("list_max_services", 100, minimum=1),
        max_service_name_bytes=g.integer("max_service_name_bytes", 1024, minimum=1),
        reflection=g.flag("reflection", True),
        tls=tls,
    )
    if tls is not None and tls.port == grpc_cfg.port and tls.port != 0:
        g.error("tls.port", f"must differ from grpc.port ({grpc_cfg.port})")
    g.reject_unknown()

    h = root.sub("http")
    http_cfg = HttpConfig(
        enabled=h.flag("enabled", True),
        host=h.text("host", "0.0.0.0"),
        port=_port(h, "port", defaults.HTTP_PORT),
        max_connections=h.integer("max_connections", 256, minimum=1, maximum=10_000),
        request_timeout_s=h.duration("request_timeout", 5.0, minimum=0.01),
    )
    if not http_cfg.request_timeout_s <= 3600:  # also NaN
        h.error("request_timeout", "must be a duration of at most 1h")
    if http_cfg.enabled and http_cfg.port == grpc_cfg.port and http_cfg.port != 0:
        h.error("port", f"must differ from grpc.port ({grpc_cfg.port})")
    if http_cfg.enabled and tls is not None and tls.port == http_cfg.port and tls.port != 0:
        g.error("tls.port", f"must differ from http.port ({http_cfg.port})")
    h.reject_unknown()

    p = root.sub("policy")
    base = _thresholds(p, Thresholds())
    overrides: dict[str, Thresholds] = {}
    ov = p.sub("overrides")
    for prefix in list(ov.raw):
        if not isinstance(prefix, str) or not prefix:
            ov.error(clip(str(prefix), 80), "a condition-name prefix must be a non-empty string")
            continue
        one = ov.sub(prefix)
        overrides[prefix] = _thresholds(one, base)
        one.reject_unknown()
    p.reject_unknown()

    lv = root.sub("liveness")
    liveness = LivenessConfig(
        heartbeat_interval_s=lv.duration(
            "heartbeat_interval", 1.0, minimum=0.05, maximum=MAX_HEARTBEAT_INTERVAL_S
        ),
        max_loop_lag_s=lv.duration("max_loop_lag", 5.0, minimum=0.1, maximum=MAX_LOOP_LAG_S),
    )
    lv.reject_unknown()

    lg = root.sub("log")
    log_level = lg.text("level", "info", choices=("debug", "info", "warning", "error"))
    log_format = lg.text("format", "json", choices=("json", "text"))
    lg.reject_unknown()

    simulate = root.flag("simulate", False)
    scenario = root.text("scenario", "")
    if scenario and not simulate:
        root.error("scenario", "needs --simulate (a scenario file only drives the simulation)")

    components: dict[str, Any] = {}
    for name, parser in component_parsers().items():
        components[name] = parser(root.sub(name))

    cfg = SidecarConfig(
        grpc=grpc_cfg,
        http=http_cfg,
        policy=PolicyConfig(defaults=base, overrides=overrides),
        liveness=liveness,
        jitter=root.number("jitter", 0.1, minimum=0.0, maximum=0.5),
        shutdown_grace_s=root.duration("shutdown_grace", 5.0, maximum=MAX_SHUTDOWN_GRACE_S),
        log_level=log_level,
        log_format=log_format,
        simulate=simulate,
        scenario=scenario,
        state_dir=root.text("state_dir", defaults.STATE_DIR),
        engines_dir=root.text("engines_dir", ""),
        config_file=config_file,
        components=components,
    )
    root.reject_unknown()
    if errors:
        raise ConfigError(errors)
    return cfg


def load_config(
    *,
    config_file: str | None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
) -> SidecarConfig:
    """File, then environment, then flag overrides (paths -> values). Raises ConfigError."""
    env = os.environ if env is None else env
    path = config_file or env.get(f"{defaults.ENV_PREFIX}CONFIG", "")
    doc: dict[str, Any] = read_config_file(path) if path else {}
    env_errors: list[str] = []
    apply_env(doc, env, env_errors)
    for key_path, value in (overrides or {}).items():
        _set_path(doc, key_path, value)
    try:
        cfg = parse_config(doc, config_file=path)
    except ConfigError as exc:
        raise ConfigError(env_errors + exc.all_problems) from None
    if env_errors:
        raise ConfigError(env_errors)
    return cfg
