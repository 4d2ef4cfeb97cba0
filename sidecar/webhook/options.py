"""The webhook's options: the dataclass the server takes, and the command-line flags that make it
(``trt-health-sidecar webhook`` adds them to its subcommand through :func:`add_webhook_arguments`)."""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sidecar.config.defaults import WEBHOOK_PORT

__all__ = [
    "DEFAULT_CONFIG_MAP",
    "DEFAULT_IMAGE_ENV",
    "WebhookOptions",
    "add_webhook_arguments",
    "is_config_map_name",
    "options_from_args",
]

DEFAULT_IMAGE_ENV = "TRT_HEALTH_SIDECAR_IMAGE"
DEFAULT_CONFIG_MAP = "trt-health-sidecar-config"

_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def is_config_map_name(name: str) -> bool:
    """Whether ``name`` can name a ConfigMap (a DNS subdomain)."""
    return bool(_DNS_SUBDOMAIN_RE.match(name))


@dataclass(frozen=True, slots=True)
class WebhookOptions:
    """Everything the webhook server needs; built from the command line or directly (tests)."""

    tls_cert: Path
    tls_key: Path
    sidecar_image: str
    port: int = WEBHOOK_PORT
    bind: str = "0.0.0.0"
    config_map: str = DEFAULT_CONFIG_MAP
    image_pull_policy: str = "IfNotPresent"
    events: bool = True  # mount a projected API token in the sidecar (for Kubernetes Events)
    cert_reload_interval_s: float = 1.0


def add_webhook_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``webhook`` subcommand's flags to ``parser``."""
    parser.add_argument("--tls-cert", type=Path, help="serving certificate (PEM, with chain)")
    parser.add_argument("--tls-key", type=Path, help="serving private key (PEM)")
    parser.add_argument("--port", type=int, default=WEBHOOK_PORT, help="HTTPS port (default %(default)s)")
    parser.add_argument("--bind", default="0.0.0.0", help="listen address (default %(default)s)")
    parser.add_argument(
        "--sidecar-image",
        default=os.environ.get(DEFAULT_IMAGE_ENV, ""),
        help=f"image of the injected sidecar (default ${DEFAULT_IMAGE_ENV})",
    )
    parser.add_argument(
        "--config-map",
        default=DEFAULT_CONFIG_MAP,
        help="ConfigMap with config.yaml when the pod names none (default %(default)s)",
    )
    parser.add_argument(
        "--image-pull-policy",
        default="IfNotPresent",
        choices=("Always", "IfNotPresent", "Never"),
        help="imagePullPolicy of the injected sidecar (default %(default)s)",
    )
    parser.add_argument(
        "--no-events",
        dest="events",
        action="store_false",
        help="do not mount an API token in the sidecar (Kubernetes Events off)",
    )
    parser.add_argument(
        "--cert-reload-interval",
        type=float,
        default=1.0,
        help="seconds between checks of the certificate files (default %(default)s)",
    )


def options_from_args(ns: argparse.Namespace) -> WebhookOptions:
    """Validate parsed flags; raises ValueError whose message names the flag."""
    problems = []
    if ns.tls_cert is None:
        problems.append("--tls-cert: required")
    if ns.tls_key is None:
        problems.append("--tls-key: required")
    if not ns.sidecar_image:
        problems.append(f"--sidecar-image: required (or set {DEFAULT_IMAGE_ENV})")
    if not 0 <= ns.port <= 65535:
        problems.append(f"--port: must be 0..65535, got {ns.port}")
    if not is_config_map_name(ns.config_map):
        problems.append(f"--config-map: not a valid ConfigMap name: {ns.config_map!r}")
    if not ns.cert_reload_interval > 0:
        problems.append(f"--cert-reload-interval: must be > 0, got {ns.cert_reload_interval}")
    if problems:
        raise ValueError("; ".join(problems))
    return WebhookOptions(
        tls_cert=ns.tls_cert,
        tls_key=ns.tls_key,
        sidecar_image=ns.sidecar_image,
        port=ns.port,
        bind=ns.bind,
        config_map=ns.config_map,
        image_pull_policy=ns.image_pull_policy,
        events=ns.events,
        cert_reload_interval_s=ns.cert_reload_interval,
    )
