"""AdmissionReview and pod fixtures and an HTTPS client for webhook tests (integration and the image e2e)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

from sidecar import webhook

IMAGE = "registry.example.com/trt-health-sidecar:0.1.0"
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


class Client:
    """An HTTPS client that trusts the test CA and talks to the webhook on localhost."""

    def __init__(self, port: int, ca_path: Path) -> None:
        self.port = port
        self.ctx = ssl.create_default_context(cafile=str(ca_path))

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("localhost", self.port, context=self.ctx, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def review(self, body: bytes | dict[str, Any]) -> dict[str, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        status, data = self.request("POST", "/mutate", raw, {"Content-Type": "application/json"})
        assert status == 200, data
        answer = json.loads(data)
        assert answer["apiVersion"] == "admission.k8s.io/v1"
        assert answer["kind"] == "AdmissionReview"
        assert answer["response"]["allowed"] is True
        return dict(answer["response"])

    def peer_fingerprint(self) -> str:
        with socket.create_connection(("localhost", self.port), timeout=5) as raw:
            with self.ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return hashlib.sha256(der).hexdigest()
