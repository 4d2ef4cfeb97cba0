"""The ``events:`` config section, declared once: :class:`EventsConfig` and
:func:`parse_events_config`."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import Section
from sidecar.config.fields import duration, flag, integer, path, read, text

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
COMPONENT = "trt-health-sidecar"


def _http_url(url: str) -> str | None:
    if url and not url.startswith(("https://", "http://")):
        return f"must start with https:// or http://, got {url!r}"
    return None


@dataclass(frozen=True, slots=True)
class EventsConfig:
    """The ``events:`` config section (empty strings are filled in at start where possible).

    The pod's names and the API server default to the downward-API and in-cluster environment
    (:func:`parse_events_config`)."""

    enabled: bool = flag(False)
    namespace: str = text()  # POD_NAMESPACE
    pod_name: str = text()  # POD_NAME
    pod_uid: str = text()  # POD_UID
    node_name: str = text()  # NODE_NAME
    api_server: str = text(valid=_http_url)  # https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT
    token_file: Path = path(SERVICE_ACCOUNT_DIR / "token")
    ca_file: Path = path(SERVICE_ACCOUNT_DIR / "ca.crt")
    namespace_file: Path = path(SERVICE_ACCOUNT_DIR / "namespace")
    component: str = text(COMPONENT)
    aggregate_window_s: float = duration(600.0)
    burst: int = integer(10, min=1, max=1000)
    refill_interval_s: float = duration(30.0, min=0.001)
    timeout_s: float = duration(5.0, min=0.1)
    queue_size: int = integer(256, min=1, max=100_000)


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
    base = EventsConfig(
        namespace=env.get("POD_NAMESPACE", ""),
        pod_name=env.get("POD_NAME", ""),
        pod_uid=env.get("POD_UID", ""),
        node_name=env.get("NODE_NAME", ""),
        api_server=_default_api_server(env),
    )
    cfg = read(EventsConfig, sec, base=base)
    return dataclasses.replace(cfg, api_server=cfg.api_server.rstrip("/"))
