"""Default ports, paths and service names that manifests, tooling and docs rely on.

A test cross-checks the Kubernetes manifests against these values, so they cannot drift.
"""

from __future__ import annotations

GRPC_PORT = 9180  # plaintext grpc.health.v1 + diagnostics; what the kubelet's gRPC probes dial
HTTP_PORT = 9181  # /healthz, /livez, /readyz, /metrics
GRPC_TLS_PORT = 9182  # optional TLS / mTLS listener (only when certificates are configured)
WEBHOOK_PORT = 8443  # the injection webhook (a separate Deployment)

STATE_DIR = "/var/run/trt-health-sidecar"  # persisted fatal latches (emptyDir in the pod)
CONFIG_PATH = "/etc/trt-health-sidecar/config.yaml"
ENV_PREFIX = "TRT_HEALTH_"  # environment overrides: TRT_HEALTH_GRPC_PORT=...
