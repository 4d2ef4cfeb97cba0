"""Loading: the YAML file, then the environment, then flags (flags win); every error at once.

Precedence (lowest first): built-in defaults, the YAML file (``--config`` or
``TRT_HEALTH_CONFIG``), environment variables, command-line flags.

Environment variables:

- the named ones: ``TRT_HEALTH_GRPC_PORT``, ``TRT_HEALTH_HTTP_PORT``, ``TRT_HEALTH_SIMULATE``,
  ``TRT_HEALTH_SCENARIO``, ``TRT_HEALTH_STATE_DIR``, ``TRT_HEALTH_LOG_LEVEL``;
- any field by path with double underscores: ``TRT_HEALTH__gpu__poll_interval=2s`` sets
  ``gpu.poll_interval`` (values are parsed as YAML scalars, so ``true``/``5``/``2s`` work).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sidecar.config import defaults
from sidecar.config.section import ConfigError
from sidecar.config.sidecar import SidecarConfig, parse_config
from sidecar.runtime.safeload import (
    MAX_CONFIG_BYTES,
    UnsafeDocumentError,
    clip,
    load_yaml_bounded,
    read_bounded,
)

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
