"""The project's exception hierarchy and the process exit codes (decided in cli.py only)."""

from __future__ import annotations

# Exit codes of `serve` (documented in the README; stable for scripts and manifests).
EXIT_OK = 0  # clean shutdown (SIGTERM / SIGINT)
EXIT_INTERNAL = 1  # unexpected internal error
EXIT_CONFIG = 2  # the config (file, env or flags) is invalid
EXIT_BIND = 3  # a listening port or socket could not be bound
EXIT_TLS = 4  # TLS material could not be loaded at start

# Exit codes of `probe` (same as grpc_health_probe).
PROBE_OK = 0
PROBE_INVALID_ARGUMENTS = 1
PROBE_CONNECTION_FAILURE = 2
PROBE_RPC_FAILURE = 3
PROBE_UNHEALTHY = 4


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose."""


class BindError(SidecarError):
    """A server could not listen on its address."""


class TlsMaterialError(SidecarError):
    """Certificate or key files are missing or do not parse."""
