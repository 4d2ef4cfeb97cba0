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

Parts: :mod:`~sidecar.webhook.options` (flags and options), :mod:`~sidecar.webhook.spec` (the
injected container and volumes), :mod:`~sidecar.webhook.plan` (the pod patch),
:mod:`~sidecar.webhook.admission` (AdmissionReview handling), :mod:`~sidecar.webhook.server`
(HTTPS), :mod:`~sidecar.webhook.main` (the entry point).
"""

from __future__ import annotations

from sidecar.webhook.admission import (
    Decision,
    admission_response,
)
from sidecar.webhook.main import (
    main,
    run_webhook,
)
from sidecar.webhook.options import (
    DEFAULT_CONFIG_MAP,
    DEFAULT_IMAGE_ENV,
    WebhookOptions,
    add_webhook_arguments,
    options_from_args,
)
from sidecar.webhook.plan import (
    ANNOTATION_CONFIG_MAP,
    ANNOTATION_DEFAULT_CONTAINER,
    ANNOTATION_ENGINE_VOLUME,
    ANNOTATION_INJECT,
    ANNOTATION_INJECTED,
    ANNOTATION_MAIN_CONTAINER,
    ANNOTATION_PREFIX,
    ANNOTATION_VISIBLE_DEVICES,
    ANNOTATION_WORKLOAD_LIVENESS,
    MAX_WARNING_CHARS,
    plan_patch,
    pointer_token,
)
from sidecar.webhook.server import (
    MAX_BODY_BYTES,
    REQUEST_TIMEOUT_S,
    WebhookServer,
)
from sidecar.webhook.spec import (
    DEFAULT_ENGINE_MOUNT,
    LIVENESS_PROBE,
    READINESS_PROBE,
    RESOURCES,
    SECURITY_CONTEXT,
    SERVICE_ACCOUNT_DIR,
    SIDECAR_NAME,
    STARTUP_PROBE,
    VOLUME_CONFIG,
    VOLUME_KUBE_API,
    VOLUME_STATE,
    VOLUME_TMP,
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
    "DEFAULT_CONFIG_MAP",
    "DEFAULT_ENGINE_MOUNT",
    "DEFAULT_IMAGE_ENV",
    "LIVENESS_PROBE",
    "MAX_BODY_BYTES",
    "MAX_WARNING_CHARS",
    "READINESS_PROBE",
    "REQUEST_TIMEOUT_S",
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
    "Decision",
    "WebhookOptions",
    "WebhookServer",
    "add_webhook_arguments",
    "admission_response",
    "main",
    "options_from_args",
    "plan_patch",
    "pointer_token",
    "run_webhook",
    "sidecar_container",
    "sidecar_volumes",
]
