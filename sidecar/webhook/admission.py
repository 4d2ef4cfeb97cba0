"""AdmissionReview handling: one request body in, one AdmissionReview v1 response out.

Never raises and always allows: a request that cannot be understood, or a pod that cannot be
injected, is admitted unchanged with a warning (the ValidatingAdmissionPolicy in
``manifests/overlays/webhook`` rejects an opted-in pod that arrives without the sidecar).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sidecar.webhook.options import WebhookOptions
from sidecar.webhook.plan import add_warning, as_dict, plan_patch

__all__ = ["Decision", "admission_response"]

log = logging.getLogger("sidecar.webhook")  # one logger for the whole program, as before the split


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


def _pod_name(pod: Mapping[str, Any]) -> str:
    metadata = as_dict(pod.get("metadata")) or {}
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
        add_warning(warnings, f"trt-health: {text}; pod admitted unchanged")
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
    request = as_dict(review.get("request"))
    if request is not None and isinstance(request.get("uid"), str):
        uid = request["uid"]
    if review.get("kind") != "AdmissionReview" or review.get("apiVersion") != ("admission.k8s.io/v1"):
        return invalid("NotAnAdmissionReview", "expected an admission.k8s.io/v1 AdmissionReview")
    if request is None or not uid:
        return invalid("NoRequest", "AdmissionReview has no request uid")
    kind = as_dict(request.get("kind")) or {}
    namespace = str(request.get("namespace") or "")
    if (kind.get("group"), kind.get("kind")) != ("", "Pod") or request.get("subResource"):
        return invalid("NotAPod", f"unexpected kind {kind.get('kind')!r}")
    if request.get("operation") != "CREATE":
        d = Decision(uid=uid, action="skipped", reason="NotCreate", namespace=namespace)
        return answer(d), d
    pod = as_dict(request.get("object"))
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
        namespace=namespace or str((as_dict(pod.get("metadata")) or {}).get("namespace") or ""),
        pod=_pod_name(pod),
        patch_ops=len(ops),
        warnings=warnings,
    )
    return answer(d, ops), d
