"""Deep health-check sidecar for GPU inference services (grpc.health.v1)."""

__version__ = "0.1.0"
