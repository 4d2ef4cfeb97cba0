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

# The package's names are its parts' public names (asyncio's pattern): each part's __all__ is
# the one list of what it offers.
from sidecar.webhook import admission, options, plan, server, spec
from sidecar.webhook import main as entry
from sidecar.webhook.admission import *  # noqa: F403
from sidecar.webhook.main import *  # noqa: F403
from sidecar.webhook.options import *  # noqa: F403
from sidecar.webhook.plan import *  # noqa: F403
from sidecar.webhook.server import *  # noqa: F403
from sidecar.webhook.spec import *  # noqa: F403

__all__ = [
    *admission.__all__,
    *entry.__all__,
    *options.__all__,
    *plan.__all__,
    *server.__all__,
    *spec.__all__,
]
