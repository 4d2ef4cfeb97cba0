"""Typed configuration: YAML file + environment + flags (flags win), every error at once.

- :mod:`sidecar.config.section`: :class:`Section` (one mapping, errors collected, each naming
  its field), :class:`ConfigError`, Go durations;
- :mod:`sidecar.config.fields`: declaring a section's fields once on its dataclass, and the one
  reader of such declarations;
- :mod:`sidecar.config.sidecar`: the core sections and :func:`parse_config`;
- :mod:`sidecar.config.load`: file, environment and flags (:func:`load_config`);
- :mod:`sidecar.config.defaults`: the ports, paths and names manifests and tooling rely on.

Each capability's own section lives in its package (``sidecar/gpu/config.py`` ...).

What the probe needs (:func:`parse_go_duration`) loads at once; the rest on first use, so that
``python -m sidecar probe`` stays a small program.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sidecar.config.section import MAX_DURATION_S, ConfigError, Section, parse_go_duration

if TYPE_CHECKING:
    from sidecar.config.load import apply_env, load_config, read_config_file
    from sidecar.config.sidecar import (
        ComponentParser,
        GrpcConfig,
        HttpConfig,
        LivenessConfig,
        SidecarConfig,
        TlsConfig,
        component_parsers,
        parse_config,
    )

_LAZY = {
    "apply_env": "sidecar.config.load",
    "load_config": "sidecar.config.load",
    "read_config_file": "sidecar.config.load",
    "ComponentParser": "sidecar.config.sidecar",
    "GrpcConfig": "sidecar.config.sidecar",
    "HttpConfig": "sidecar.config.sidecar",
    "LivenessConfig": "sidecar.config.sidecar",
    "SidecarConfig": "sidecar.config.sidecar",
    "TlsConfig": "sidecar.config.sidecar",
    "component_parsers": "sidecar.config.sidecar",
    "parse_config": "sidecar.config.sidecar",
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


__all__ = [
    "MAX_DURATION_S",
    "ComponentParser",
    "ConfigError",
    "GrpcConfig",
    "HttpConfig",
    "LivenessConfig",
    "Section",
    "SidecarConfig",
    "TlsConfig",
    "apply_env",
    "component_parsers",
    "load_config",
    "parse_config",
    "parse_go_duration",
    "read_config_file",
]
