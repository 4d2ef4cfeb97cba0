"""The pod patch: which pods opt in, and the JSONPatch (RFC 6902) that injects the sidecar.

Pure: a pod (a parsed JSON object, possibly malformed) and the options in; operations, warnings
and the decision out. Nothing here raises on a bad pod; it is admitted unchanged with a warning.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from sidecar import __version__
from sidecar.webhook.options import WebhookOptions, is_config_map_name
from sidecar.webhook.spec import (
    DEFAULT_ENGINE_MOUNT,
    SIDECAR_NAME,
    WORKLOAD_LIVENESS_PROBE,
    sidecar_container,
    sidecar_volumes,
)

__all__ = [
    "ANNOTATION_CONFIG_MAP",
    "ANNOTATION_DEFAULT_CONTAINER",
    "ANNOTATION_ENGINE_VOLUME",
    "ANNOTATION_INJECT",
    "ANNOTATION_INJECTED",
    "ANNOTATION_MAIN_CONTAINER",
    "ANNOTATION_PREFIX",
    "ANNOTATION_VISIBLE_DEVICES",
    "ANNOTATION_WORKLOAD_LIVENESS",
    "MAX_WARNING_CHARS",
    "add_warning",
    "as_dict",
    "as_list",
    "plan_patch",
    "pointer_token",
]

ANNOTATION_PREFIX = "trt-health.io/"
ANNOTATION_INJECT = "trt-health.io/inject"
ANNOTATION_INJECTED = "trt-health.io/injected"
ANNOTATION_ENGINE_VOLUME = "trt-health.io/engine-volume"
ANNOTATION_CONFIG_MAP = "trt-health.io/config-map"
ANNOTATION_WORKLOAD_LIVENESS = "trt-health.io/workload-liveness"
ANNOTATION_MAIN_CONTAINER = "trt-health.io/main-container"
ANNOTATION_VISIBLE_DEVICES = "trt-health.io/nvidia-visible-devices"
ANNOTATION_DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"

MAX_WARNING_CHARS = 120  # the API server may truncate longer admission warnings

_VISIBLE_DEVICES_RE = re.compile(
    r"^(all|none|void|(GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+|\d+)(,(GPU-[0-9a-fA-F-]+|MIG-[0-9a-zA-Z/-]+|\d+))*)$"
)


def pointer_token(key: str) -> str:
    """Escape one JSON Pointer reference token (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def add_warning(warnings: list[str], text: str) -> None:
    """Append ``text``, cut to what the API server shows whole (``MAX_WARNING_CHARS``)."""
    warnings.append(text if len(text) <= MAX_WARNING_CHARS else text[: MAX_WARNING_CHARS - 1] + "…")


def as_dict(value: Any) -> dict[str, Any] | None:
    """``value`` if it is a JSON object, else None."""
    return value if isinstance(value, dict) else None


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def _container_names(spec: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("containers", "initContainers", "ephemeralContainers"):
        for c in as_list(spec.get(key)):
            if isinstance(c, dict) and isinstance(c.get("name"), str):
                names.add(c["name"])
    return names


def _engine_mount(spec: Mapping[str, Any], volume: str, warnings: list[str]) -> dict[str, Any] | None:
    volumes = {v.get("name") for v in as_list(spec.get("volumes")) if isinstance(v, dict)}
    if volume not in volumes:
        add_warning(warnings, f"trt-health: engine volume {volume!r} not in pod; engine checks see none")
        return None
    for c in as_list(spec.get("containers")):
        cdict = as_dict(c) or {}
        for m in as_list(cdict.get("volumeMounts")):
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
    for c in as_list(spec.get("containers")):
        resources = as_dict((as_dict(c) or {}).get("resources")) or {}
        for claim in as_list(resources.get("claims")):
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
        add_warning(warnings, f"trt-health: main container {wanted!r} not found; no workload liveness")
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
    metadata = as_dict(pod.get("metadata")) or {}
    annotations = as_dict(metadata.get("annotations")) or {}
    spec = as_dict(pod.get("spec"))
    if annotations.get(ANNOTATION_INJECT) != "true":
        return [], warnings, "skipped", "NotOptedIn"
    if spec is None:
        add_warning(warnings, "trt-health: pod has no spec; sidecar not injected")
        return [], warnings, "invalid", "NoSpec"
    if ANNOTATION_INJECTED in annotations or SIDECAR_NAME in _container_names(spec):
        return [], warnings, "already-injected", "AlreadyInjected"
    containers = as_list(spec.get("containers"))
    if not containers or not all(isinstance(c, dict) for c in containers):
        add_warning(warnings, "trt-health: pod has no containers; sidecar not injected")
        return [], warnings, "invalid", "NoContainers"

    config_map = annotations.get(ANNOTATION_CONFIG_MAP, options.config_map)
    if not isinstance(config_map, str) or not is_config_map_name(config_map):
        add_warning(warnings, f"trt-health: bad {ANNOTATION_CONFIG_MAP} {config_map!r}; using default")
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
            add_warning(warnings, f"trt-health: {ANNOTATION_VISIBLE_DEVICES} ignored: pod uses DRA")
    elif isinstance(requested, str) and _VISIBLE_DEVICES_RE.match(requested):
        visible = requested
    else:
        if requested is not None:
            add_warning(warnings, f"trt-health: bad {ANNOTATION_VISIBLE_DEVICES} {requested!r}")
        add_warning(warnings, "trt-health: sidecar gets no GPU (no shared DRA claim, no visible-devices)")

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
    existing = {v.get("name") for v in as_list(spec.get("volumes")) if isinstance(v, dict)}
    new_volumes = []
    for vol in sidecar_volumes(options, config_map):
        if vol["name"] in existing:
            add_warning(warnings, f"trt-health: pod already has volume {vol['name']!r}; reusing it")
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
                add_warning(warnings, "trt-health: main container has a livenessProbe; left unchanged")
            else:
                ops.append(
                    {
                        "op": "add",
                        "path": f"/spec/containers/{idx}/livenessProbe",
                        "value": copy.deepcopy(WORKLOAD_LIVENESS_PROBE),
                    }
                )
    return ops, warnings, "injected", "Injected"
