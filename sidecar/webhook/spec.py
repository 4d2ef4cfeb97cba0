"""What the webhook injects: the sidecar container and its volumes, in the same shape as
``manifests/base`` (tests/unit/test_manifests.py keeps both equal)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from sidecar.config.defaults import CONFIG_PATH, GRPC_PORT, HTTP_PORT, STATE_DIR
from sidecar.core.values import (
    SERVICE_LIVENESS,
    SERVICE_READINESS,
    SERVICE_STARTUP,
    SERVICE_WORKLOAD_LIVENESS,
)
from sidecar.webhook.options import WebhookOptions

__all__ = [
    "DEFAULT_ENGINE_MOUNT",
    "LIVENESS_PROBE",
    "READINESS_PROBE",
    "RESOURCES",
    "SECURITY_CONTEXT",
    "SERVICE_ACCOUNT_DIR",
    "SIDECAR_NAME",
    "STARTUP_PROBE",
    "VOLUME_CONFIG",
    "VOLUME_KUBE_API",
    "VOLUME_STATE",
    "VOLUME_TMP",
    "WORKLOAD_LIVENESS_PROBE",
    "sidecar_container",
    "sidecar_volumes",
]

SIDECAR_NAME = "trt-health-sidecar"
DEFAULT_ENGINE_MOUNT = "/engines"
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

VOLUME_CONFIG = "trt-health-config"
VOLUME_STATE = "trt-health-state"
VOLUME_TMP = "trt-health-tmp"
VOLUME_KUBE_API = "trt-health-kube-api"

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
