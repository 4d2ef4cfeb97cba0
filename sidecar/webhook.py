"""Mutating admission webhook that injects trt-health-sidecar into opted-in pods.

``python -m sidecar webhook`` (wired by cli.py through :func:`add_webhook_arguments` and
:func:`run_webhook`; ``python -m sidecar.webhook`` works on its own too) serves AdmissionReview v1
over HTTPS on ``POST /mutate`` and ``GET /healthz``.

A pod opts in with the annotation ``trt-health.io/inject: "true"`` (exactly, as the
ValidatingAdmissionPolicy in ``manifests/overlays/webhook`` checks). It then gets the sidecar as
a *native sidecar* (an init container with ``restartPolicy: Always``) with the same probes,
security context, resources, env and mounts as ``manifests/base`` (a test keeps both equal):

- ``trt-health.io/engine-volume: NAME``: the pod volume holding the engines, mounted read-only at
  the path (and subPath) where an app container mounts it, else at ``/engines``;
- ``trt-health.io/config-map: NAME``: the ConfigMap with ``config.yaml`` (default: ``--config-map``);
- ``trt-health.io/workload-liveness: "true"``: adds a ``livenessProbe`` (service
  ``workload-liveness`` on the sidecar's port) to the main container (``trt-health.io/main-container``,
  else ``kubectl.kubernetes.io/default-container``, else the first container) when it has none;
- ``trt-health.io/nvidia-visible-devices: all|<uuids>``: device-plugin clusters only, where the pod
  owns every GPU of its node (see manifests/README.md). Pods whose containers reference DRA
  claims share those claims with the sidecar automatically; otherwise the sidecar gets
  ``NVIDIA_VISIBLE_DEVICES=void`` and the response carries a warning.

The answer is always ``allowed: true``: a pod that cannot be injected, or a request that cannot be
understood, is admitted unchanged with a warning (and the ValidatingAdmissionPolicy rejects an
opted-in pod that arrives without the sidecar). Injection is idempotent: a pod that carries the
``trt-health.io/injected`` annotation or a container named ``trt-health-sidecar`` is left alone.
The serving certificate is re-read when its files change (cert-manager / kubelet secret updates).
Every decision is logged as one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hashlib
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from socketserver import TCPServer
from typing import Any

from sidecar import __version__
from sidecar.core.errors import (
    EXIT_BIND,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_TLS,
    BindError,
    TlsMaterialError,
)
from sidecar.core.values import (
    SERVICE_LIVENESS,
    SERVICE_READINESS,
    SERVICE_STARTUP,
    SERVICE_WORKLOAD_LIVENESS,
)
from sidecar.defaults import CONFIG_PATH, GRPC_PORT, HTTP_PORT, STATE_DIR, WEBHOOK_PORT

log = logging.getLogger(__name__)

ANNOTATION_PREFIX = "trt-health.io/"
ANNOTATION_INJECT = "trt-health.io/inject"
ANNOTATION_INJECTED = "trt-health.io/injected"
ANNOTATION_ENGINE_VOLUME = "trt-health.io/engine-volume"
ANNOTATION_CONFIG_MAP = "trt-health.io/config-map"
ANNOTATION_WORKLOAD_LIVENESS = "trt-health.io/workload-liveness"
ANNOTATION_MAIN_CONTAINER = "trt-health.io/main-container"
ANNOTATION_VISIBLE_DEVICES = "trt-health.io/nvidia-visible-devices"
ANNOTATION_DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"

SIDECAR_NAME = "trt-health-sidecar"
DEFAULT_IMAGE_ENV = "TRT_HEALTH_SIDECAR_IMAGE"
DEFAULT_CONFIG_MAP = "trt-health-sidecar-config"
DEFAULT_ENGINE_MOUNT = "/engines"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

VOLUME_CONFIG = "trt-health-config"
VOLUME_STATE = "trt-health-state"
VOLUME_TMP = "trt-health-tmp"
VOLUME_KUBE_API = "trt-health-kube-api"

MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_WARNING_CHARS = 120  # the API server may truncate longer admission warnings
REQUEST_TIMEOUT_S = 10.0

# Probes of the injected sidecar and of the main container. manifests/base/deployment.yaml uses
# the same values (tests/unit/test_manifests.py compares them); manifests/README.md explains them.
STARTUP_PROBE: dict[str, Any] = {
    "grpc": {"port": GRPC_PORT, "service": SERVICE_STARTUP},
    "periodSeconds": 1,
    "timeoutSeconds": 1,
    "failureThreshold": 30,
}
LIVENESS_PROBE: dict[str, Any] = {
    "grpc": {"port": GRPC_PORT, "service": SERVICE_LIVENESS},
    "periodSeconds": 10,
    "timeoutSeconds": 2,
    "failureThreshold": 3,
}
READINESS_PROBE: dict[str, Any] = {
    "grpc": {"port": GRPC_PORT, "service": SERVICE_READINESS},
    "periodSeconds": 2,
    "timeoutSeconds": 1,
    "successThreshold": 1,
    "failureThreshold": 2,
}
WORKLOAD_LIVENESS_PROBE: dict[str, Any] = {
    "grpc": {"port": GRPC_PORT, "service": SERVICE_WORKLOAD_LIVENESS},
    "periodSeconds": 10,
    "timeoutSeconds": 2,
    "failureThreshold": 3,
}
SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "384Mi"},
    "limits": {"memory": "1Gi"},
}

_VISIBLE_DEVICES_RE = re.compile(
    r"^(all|none|void|(GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+|\d+)(,(GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+|\d+))*)$"
)
_DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


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


@dataclass(slots=True)
class Decision:
    """What the webhook decided for one request (logged as one JSON line)."""

    uid: str
    action: str  # injected | skipped | already-injected | invalid
    reason: str
    namespace: str = ""
    pod: str = ""
    patch_ops: int = 0
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Pure part: AdmissionReview in, AdmissionReview out.


def pointer_token(key: str) -> str:
    """Escape one JSON Pointer reference token (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def _warn(warnings: list[str], text: str) -> None:
    warnings.append(text if len(text) <= MAX_WARNING_CHARS else text[: MAX_WARNING_CHARS - 1] + "…")


def _as_dict(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def sidecar_container(
    options: WebhookOptions,
    *,
    engine_mount: Mapping[str, Any] | None = None,
    claims: Sequence[Mapping[str, Any]] = (),
    visible_devices: str | None = "void",
) -> dict[str, Any]:
    """The native sidecar container injected into a pod (same shape as manifests/base)."""
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ]
    if visible_devices is not None:
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": visible_devices})
    mounts: list[dict[str, Any]] = [
        {
            "name": VOLUME_CONFIG,
            "mountPath": str(PurePosixPath(CONFIG_PATH).parent),
            "readOnly": True,
        },
    ]
    if engine_mount is not None:
        mounts.append(dict(engine_mount))
    mounts += [
        {"name": VOLUME_STATE, "mountPath": STATE_DIR},
        {"name": VOLUME_TMP, "mountPath": "/tmp"},
    ]
    if options.events:
        mounts.append({"name": VOLUME_KUBE_API, "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})
    resources = copy.deepcopy(RESOURCES)
    if claims:
        resources["claims"] = [dict(c) for c in claims]
    return {
        "name": SIDECAR_NAME,
        "image": options.sidecar_image,
        "imagePullPolicy": options.image_pull_policy,
        "restartPolicy": "Always",
        "command": ["trt-health-sidecar", "serve"],
        "args": ["--config", CONFIG_PATH],
        "ports": [
            {"name": "health-grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "health-http", "containerPort": HTTP_PORT, "protocol": "TCP"},
        ],
        "env": env,
        "resources": resources,
        "startupProbe": copy.deepcopy(STARTUP_PROBE),
        "livenessProbe": copy.deepcopy(LIVENESS_PROBE),
        "readinessProbe": copy.deepcopy(READINESS_PROBE),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(SECURITY_CONTEXT),
        "volumeMounts": mounts,
    }


def sidecar_volumes(options: WebhookOptions, config_map: str) -> list[dict[str, Any]]:
    """The pod volumes the injected sidecar mounts (same shape as manifests/base)."""
    volumes: list[dict[str, Any]] = [
        {"name": VOLUME_CONFIG, "configMap": {"name": config_map}},
        {"name": VOLUME_STATE, "emptyDir": {"sizeLimit": "16Mi"}},
        {"name": VOLUME_TMP, "emptyDir": {"sizeLimit": "64Mi"}},
    ]
    if options.events:
        volumes.append(
            {
                "name": VOLUME_KUBE_API,
                "projected": {
                    "sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {
                                        "path": "namespace",
                                        "fieldRef": {"fieldPath": "metadata.namespace"},
                                    }
                                ]
                            }
                        },
                    ]
                },
            }
        )
    return volumes


def _container_names(spec: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in _as_list(spec.get(key)):
            if isinstance(c, dict) and isinstance(c.get("name"), str):
                names.add(c["name"])
    return names


def _engine_mount(spec: Mapping[str, Any], volume: str, warnings: list[str]) -> dict[str, Any] | None:
    volumes = {v.get("name") for v in _as_list(spec.get("volumes")) if isinstance(v, dict)}
    if volume not in volumes:
        _warn(warnings, f"trt-health: engine volume {volume!r} not in pod; engine checks see none")
        return None
    for c in _as_list(spec.get("containers")):
        cdict = _as_dict(c) or {}
        for m in _as_list(cdict.get("volumeMounts")):
            if isinstance(m, dict) and m.get("name") == volume and isinstance(m.get("mountPath"), str):
                mount: dict[str, Any] = {
                    "name": volume,
                    "mountPath": m["mountPath"],
                    "readOnly": True,
                }
                for key in ("subPath", "subPathExpr"):
                    if isinstance(m.get(key), str):
                        mount[key] = m[key]
                return mount
    return {"name": volume, "mountPath": DEFAULT_ENGINE_MOUNT, "readOnly": True}


def _shared_claims(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """DRA claims referenced by the app containers (the sidecar shares them)."""
    out: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for c in _as_list(spec.get("containers")):
        resources = _as_dict((_as_dict(c) or {}).get("resources")) or {}
        for claim in _as_list(resources.get("claims")):
            if not isinstance(claim, dict) or not isinstance(claim.get("name"), str):
                continue
            key = (claim["name"], str(claim.get("request", "")))
            if key in seen:
                continue
            seen.add(key)
            entry = {"name": claim["name"]}
            if isinstance(claim.get("request"), str):
                entry["request"] = claim["request"]
            out.append(entry)
    return out


def _main_container_index(
    containers: list[Any], annotations: Mapping[str, Any], warnings: list[str]
) -> int | None:
    wanted = annotations.get(ANNOTATION_MAIN_CONTAINER) or annotations.get(ANNOTATION_DEFAULT_CONTAINER)
    if isinstance(wanted, str) and wanted:
        for i, c in enumerate(containers):
            if isinstance(c, dict) and c.get("name") == wanted:
                return i
        _warn(warnings, f"trt-health: main container {wanted!r} not found; no workload liveness")
        return None
    return 0 if containers else None


def plan_patch(
    pod: Mapping[str, Any], options: WebhookOptions
) -> tuple[list[dict[str, Any]], list[str], str, str]:
    """The JSONPatch that injects the sidecar into ``pod``.

    Returns ``(operations, warnings, action, reason)``; ``operations`` is empty unless the
    action is ``injected``.
    """
    warnings: list[str] = []
    metadata = _as_dict(pod.get("metadata")) or {}
    annotations = _as_dict(metadata.get("annotations")) or {}
    spec = _as_dict(pod.get("spec"))
    if annotations.get(ANNOTATION_INJECT) != "true":
        return [], warnings, "skipped", "NotOptedIn"
    if spec is None:
        _warn(warnings, "trt-health: pod has no spec; sidecar not injected")
        return [], warnings, "invalid", "NoSpec"
    if ANNOTATION_INJECTED in annotations or SIDECAR_NAME in _container_names(spec):
        return [], warnings, "already-injected", "AlreadyInjected"
    containers = _as_list(spec.get("containers"))
    if not containers or not all(isinstance(c, dict) for c in containers):
        _warn(warnings, "trt-health: pod has no containers; sidecar not injected")
        return [], warnings, "invalid", "NoContainers"

    config_map = annotations.get(ANNOTATION_CONFIG_MAP, options.config_map)
    if not isinstance(config_map, str) or not _DNS_SUBDOMAIN_RE.match(config_map):
        _warn(warnings, f"trt-health: bad {ANNOTATION_CONFIG_MAP} {config_map!r}; using default")
        config_map = options.config_map

    engine_mount = None
    engine_volume = annotations.get(ANNOTATION_ENGINE_VOLUME)
    if isinstance(engine_volume, str) and engine_volume:
        engine_mount = _engine_mount(spec, engine_volume, warnings)

    claims = _shared_claims(spec)
    visible: str | None = "void"
    requested = annotations.get(ANNOTATION_VISIBLE_DEVICES)
    if claims:
        visible = None  # DRA: the driver's CDI spec decides what the sidecar sees
        if requested is not None:
            _warn(warnings, f"trt-health: {ANNOTATION_VISIBLE_DEVICES} ignored: pod uses DRA")
    elif isinstance(requested, str) and _VISIBLE_DEVICES_RE.match(requested):
        visible = requested
    else:
        if requested is not None:
            _warn(warnings, f"trt-health: bad {ANNOTATION_VISIBLE_DEVICES} {requested!r}")
        _warn(warnings, "trt-health: sidecar gets no GPU (no shared DRA claim, no visible-devices)")

    ops: list[dict[str, Any]] = []
    # 1. mark the pod (idempotency; annotation keys contain '/', escaped as ~1)
    ops.append(
        {
            "op": "add",
            "path": f"/metadata/annotations/{pointer_token(ANNOTATION_INJECTED)}",
            "value": __version__,
        }
    )
    # 2. volumes (a name the pod already has is reused, with a warning)
    existing = {v.get("name") for v in _as_list(spec.get("volumes")) if isinstance(v, dict)}
    new_volumes = []
    for vol in sidecar_volumes(options, config_map):
        if vol["name"] in existing:
            _warn(warnings, f"trt-health: pod already has volume {vol['name']!r}; reusing it")
        else:
            new_volumes.append(vol)
    if "volumes" not in spec or not isinstance(spec.get("volumes"), list):
        if new_volumes:
            ops.append({"op": "add", "path": "/spec/volumes", "value": new_volumes})
    else:
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in new_volumes]
    # 3. the sidecar, after any existing init containers (they may fetch the engine first)
    container = sidecar_container(options, engine_mount=engine_mount, claims=claims, visible_devices=visible)
    if isinstance(spec.get("initContainers"), list):
        ops.append({"op": "add", "path": "/spec/initContainers/-", "value": container})
    else:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": [container]})
    # 4. optional livenessProbe of the main container on the sidecar's workload-liveness
    if annotations.get(ANNOTATION_WORKLOAD_LIVENESS) == "true":
        idx = _main_container_index(containers, annotations, warnings)
        if idx is not None:
            if "livenessProbe" in containers[idx]:
                _warn(warnings, "trt-health: main container has a livenessProbe; left unchanged")
            else:
                ops.append(
                    {
                        "op": "add",
                        "path": f"/spec/containers/{idx}/livenessProbe",
                        "value": copy.deepcopy(WORKLOAD_LIVENESS_PROBE),
                    }
                )
    return ops, warnings, "injected", "Injected"


def _pod_name(pod: Mapping[str, Any]) -> str:
    metadata = _as_dict(pod.get("metadata")) or {}
    name = metadata.get("name") or metadata.get("generateName") or ""
    return str(name)


def admission_response(body: bytes, options: WebhookOptions) -> tuple[dict[str, Any], Decision]:
    """Answer one AdmissionReview request body. Never raises; always allows."""
    uid = ""
    warnings: list[str] = []

    def answer(decision: Decision, patch: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        response: dict[str, Any] = {"uid": decision.uid, "allowed": True}
        if patch:
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode()
        if decision.warnings:
            response["warnings"] = decision.warnings
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }

    def invalid(reason: str, text: str) -> tuple[dict[str, Any], Decision]:
        _warn(warnings, f"trt-health: {text}; pod admitted unchanged")
        d = Decision(uid=uid, action="invalid", reason=reason, warnings=warnings)
        return answer(d), d

    try:
        review = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return invalid("MalformedJSON", "request body is not JSON")
    except RecursionError:  # deeper than the parser goes: no Kubernetes object is
        return invalid("MalformedJSON", "request body is nested too deeply")
    if not isinstance(review, dict):
        return invalid("NotAnAdmissionReview", "request is not an AdmissionReview")
    request = _as_dict(review.get("request"))
    if request is not None and isinstance(request.get("uid"), str):
        uid = request["uid"]
    if review.get("kind") != "AdmissionReview" or review.get("apiVersion") != ("admission.k8s.io/v1"):
        return invalid("NotAnAdmissionReview", "expected an admission.k8s.io/v1 AdmissionReview")
    if request is None or not uid:
        return invalid("NoRequest", "AdmissionReview has no request uid")
    kind = _as_dict(request.get("kind")) or {}
    namespace = str(request.get("namespace") or "")
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or request.get("subResource"):
        return invalid("NotAPod", f"unexpected kind {kind.get('kind')!r}")
    if request.get("operation") != "CREATE":
        d = Decision(uid=uid, action="skipped", reason="NotCreate", namespace=namespace)
        return answer(d), d
    pod = _as_dict(request.get("object"))
    if pod is None:
        return invalid("NoObject", "request has no pod object")
    try:
        ops, warnings, action, reason = plan_patch(pod, options)
    except Exception:  # a bug must never block pod creation
        log.exception("admission planning failed", extra={"uid": uid})
        return invalid("InternalError", "internal error")
    d = Decision(
        uid=uid,
        action=action,
        reason=reason,
        namespace=namespace or str((_as_dict(pod.get("metadata")) or {}).get("namespace") or ""),
        pod=_pod_name(pod),
        patch_ops=len(ops),
        warnings=warnings,
    )
    return answer(d, ops), d


# --------------------------------------------------------------------------------------------
# Serving: HTTPS with a certificate that is reloaded when its files change.


class CertReloader:
    """Holds the current server ``SSLContext``; ``check()`` rebuilds it when the files change.

    A change that does not load (e.g. the key not yet rewritten) keeps the previous context and
    is retried at the next check.
    """

    def __init__(self, cert_path: Path, key_path: Path) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self._lock = threading.Lock()
        self._digest = ""
        self._context: ssl.SSLContext | None = None
        self.reloads = 0

    def _read(self) -> tuple[str, bytes]:
        cert = self.cert_path.read_bytes()
        key = self.key_path.read_bytes()
        return hashlib.sha256(cert + b"\0" + key).hexdigest(), cert

    def _build(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx

    def load(self) -> None:
        """Initial load; raises :class:`TlsMaterialError` naming the file."""
        try:
            digest, _ = self._read()
            ctx = self._build()
        except (OSError, ssl.SSLError) as exc:
            raise TlsMaterialError(
                f"cannot load TLS certificate {self.cert_path} / key {self.key_path}: {exc}"
            ) from exc
        with self._lock:
            self._context, self._digest = ctx, digest

    @property
    def context(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                raise TlsMaterialError("TLS material not loaded")
            return self._context

    def check(self) -> bool:
        """Reload if the files changed; True when a new certificate is now served."""
        try:
            digest, cert = self._read()
        except OSError as exc:
            log.warning("certificate files unreadable", extra={"error": str(exc)})
            return False
        if digest == self._digest:
            return False
        try:
            ctx = self._build()
        except (OSError, ssl.SSLError) as exc:
            log.warning("new certificate does not load yet", extra={"error": str(exc)})
            return False
        with self._lock:
            self._context, self._digest = ctx, digest
        self.reloads += 1
        log.info(
            "certificate reloaded",
            extra={"cert": str(self.cert_path), "sha256": _cert_fingerprint(cert)},
        )
        return True


def _cert_fingerprint(pem: bytes) -> str:
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii", "replace"))
    except (ValueError, binascii.Error):
        return ""
    return hashlib.sha256(der).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    server: _TlsHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "trt-health-webhook"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format, *args)

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] in ("/healthz", "/readyz", "/livez"):
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] not in ("/mutate", "/"):
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            body = b""  # answered as malformed; the connection is not reused
            self.close_connection = True
        else:
            body = self.rfile.read(length)
        started = time.monotonic()
        try:
            review, decision = admission_response(body, self.server.options)
        except Exception:  # a bug must never drop the request unanswered
            log.exception("admission failed")
            review, decision = admission_response(b"", self.server.options)
        payload = json.dumps(review, separators=(",", ":")).encode()
        self._send(200, payload)
        log.info(
            "admission decision",
            extra={
                "uid": decision.uid,
                "decision": decision.action,
                "reason": decision.reason,
                "namespace": decision.namespace,
                "pod": decision.pod,
                "patch_ops": decision.patch_ops,
                "warnings": decision.warnings,
                "duration_ms": round((time.monotonic() - started) * 1000, 3),
            },
        )


def _lingering_close(sock: ssl.SSLSocket, budget_s: float = 1.0) -> None:
    """Close after the peer has read our answer: send FIN, discard what it still sends (briefly).
    Closing with unread input makes the kernel send RST, which can destroy the answer in flight
    (e.g. after refusing an oversized body without reading it)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + budget_s
        sock.settimeout(0.2)
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    except (OSError, ValueError):
        pass
    finally:
        try:
            sock.close()
        except OSError:
            pass


class _TlsHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, options: WebhookOptions, certs: CertReloader) -> None:
        self.options = options
        self.certs = certs
        if ":" in options.bind:
            self.address_family = socket.AF_INET6
        super().__init__((options.bind, options.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN (a DNS lookup); not needed here.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # TLS handshake here, in the per-connection thread, with the current certificate.
        request.settimeout(REQUEST_TIMEOUT_S)
        try:
            tls = self.certs.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("TLS handshake failed", extra={"peer": str(client_address), "error": str(exc)})
            return
        try:
            _Handler(tls, client_address, self)
        except (ssl.SSLError, OSError) as exc:
            log.debug("connection error", extra={"peer": str(client_address), "error": str(exc)})
        finally:
            _lingering_close(tls)


class WebhookServer:
    """The HTTPS admission server; ``start()`` binds and returns, ``stop()`` shuts it down."""

    def __init__(self, options: WebhookOptions) -> None:
        self.options = options
        self.certs = CertReloader(options.tls_cert, options.tls_key)
        self._httpd: _TlsHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        """Load the certificate and listen. Raises TlsMaterialError or BindError."""
        self.certs.load()
        try:
            self._httpd = _TlsHTTPServer(self.options, self.certs)
        except OSError as exc:
            raise BindError(f"cannot listen on {self.options.bind}:{self.options.port}: {exc}") from exc
        serve = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="webhook-http"
        )
        watch = threading.Thread(target=self._watch_certs, name="webhook-cert-watch", daemon=True)
        self._threads = [serve, watch]
        for t in self._threads:
            t.daemon = True
            t.start()
        log.info(
            "webhook listening",
            extra={"bind": self.options.bind, "port": self.port, "image": self.options.sidecar_image},
        )

    def _watch_certs(self) -> None:
        while not self._stop.wait(self.options.cert_reload_interval_s):
            try:
                self.certs.check()
            except Exception:  # the watcher must outlive any surprise
                log.exception("certificate check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Command line.


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
    if not _DNS_SUBDOMAIN_RE.match(ns.config_map):
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


class _JsonFormatter(logging.Formatter):
    _SKIP = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {
        "message",
        "asctime",
    }

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._SKIP:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _ensure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def run_webhook(
    argv_or_options: Sequence[str] | argparse.Namespace | WebhookOptions | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code (sidecar.core.errors)."""
    _ensure_logging()
    if isinstance(argv_or_options, WebhookOptions):
        options = argv_or_options
    else:
        if isinstance(argv_or_options, argparse.Namespace):
            ns = argv_or_options
        else:
            parser = argparse.ArgumentParser(
                prog="trt-health-sidecar webhook", description="sidecar injection webhook"
            )
            add_webhook_arguments(parser)
            try:
                ns = parser.parse_args(argv_or_options)
            except SystemExit as exc:
                return EXIT_OK if exc.code == 0 else EXIT_CONFIG
        try:
            options = options_from_args(ns)
        except ValueError as exc:
            log.error("invalid arguments", extra={"error": str(exc)})
            print(f"trt-health-sidecar webhook: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    server = WebhookServer(options)
    try:
        server.start()
    except TlsMaterialError as exc:
        log.error("TLS material", extra={"error": str(exc)})
        return EXIT_TLS
    except BindError as exc:
        log.error("bind failed", extra={"error": str(exc)})
        return EXIT_BIND
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        log.info("webhook stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_webhook(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
