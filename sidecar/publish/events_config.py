"""The ``events:`` config section: :class:`EventsConfig` and :func:`parse_events_config`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Section

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPONENT = "trt-health-sidecar"


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """The ``events:`` config section (empty strings are filled in at start where possible)."""

    enabled: bool = False
    namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    node_name: str = ""
    api_server: str = ""
    token_file: Path = SERVICE_ACCOUNT_DIR / "token"
    ca_file: Path = SERVICE_ACCOUNT_DIR / "ca.crt"
    namespace_file: Path = SERVICE_ACCOUNT_DIR / "namespace"
    component: str = COMPONENT
    aggregate_window_s: float = 600.0
    burst: int = 10
    refill_interval_s: float = 30.0
    timeout_s: float = 5.0
    queue_size: int = 256


def _default_api_server(environ: Mapping[str, str]) -> str:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"https://{host}:{port}"


def parse_events_config(sec: Section, environ: Mapping[str, str] | None = None) -> EventsConfig:
    """Read the ``events:`` section; defaults from the downward-API env and in-cluster files."""
    env = os.environ if environ is None else environ
    d = EventsConfig()
    enabled = sec.flag("enabled", d.enabled)
    api_server = sec.text("api_server", _default_api_server(env))
    if api_server and not api_server.startswith(("https://", "http://")):
        sec.error("api_server", f"must start with https:// or http://, got {api_server!r}")
        api_server = ""
    cfg = EventsConfig(
        enabled=enabled,
        namespace=sec.text("namespace", env.get("POD_NAMESPACE", "")),
        pod_name=sec.text("pod_name", env.get("POD_NAME", "")),
        pod_uid=sec.text("pod_uid", env.get("POD_UID", "")),
        node_name=sec.text("node_name", env.get("NODE_NAME", "")),
        api_server=api_server.rstrip("/"),
        token_file=Path(sec.text("token_file", str(d.token_file))),
        ca_file=Path(sec.text("ca_file", str(d.ca_file))),
        namespace_file=Path(sec.text("namespace_file", str(d.namespace_file))),
        component=sec.text("component", d.component),
        aggregate_window_s=sec.duration("aggregate_window", d.aggregate_window_s, minimum=0.0),
        burst=sec.integer("burst", d.burst, minimum=1, maximum=1000),
        refill_interval_s=sec.duration("refill_interval", d.refill_interval_s, minimum=0.001),
        timeout_s=sec.duration("timeout", d.timeout_s, minimum=0.1),
        queue_size=sec.integer("queue_size", d.queue_size, minimum=1, maximum=100_000),
    )
    sec.reject_unknown()
    return cfg
