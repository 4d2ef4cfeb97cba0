"""AdmissionReview and pod fixtures for webhook tests (integration and the image e2e)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from sidecar import webhook

SECURE = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def app_container(name: str, **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": f"example/{name}:1", "securityContext": dict(SECURE)}
    c.update(extra)
    return c


def pod(annotations: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod as the ReplicaSet controller submits it (generateName, no name yet)."""
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "llm-inference-7d9c5b8f6d-",
            "namespace": "inference",
            "labels": {"app.kubernetes.io/name": "llm-inference"},
        },
        "spec": {"containers": [app_container("inference")]},
    }
    if annotations is not None:
        body["metadata"]["annotations"] = annotations
    body["spec"].update(spec)
    return body


def review(
    obj: dict[str, Any] | None, *, operation: str = "CREATE", uid: str | None = None
) -> dict[str, Any]:
    """An AdmissionReview v1 request as the API server sends it."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": "inference",
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "7d0b7f5e-0000-4000-8000-000000000001",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": obj,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def decode_patch(response: dict[str, Any]) -> list[dict[str, Any]]:
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    assert isinstance(ops, list) and ops
    return ops


OPT_IN = {
    webhook.ANNOTATION_INJECT: "true",
    webhook.ANNOTATION_ENGINE_VOLUME: "models",
}


def models_volume() -> dict[str, Any]:
    return {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}
