"""The container runtime side of the e2e tests: building the image (image/build.sh), turning a
rendered pod spec's container into `podman run` flags, and a gRPC prober that behaves like the
kubelet's (a fresh connection per probe, one timeout for dial + Check, thresholds counted as the
kubelet counts them)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.testing.manifests import parse_bytes

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "image" / "build.sh"
CONTAINERS_CONF = REPO / "image" / "containers.conf"
RUNTIME = "runc"  # Debian's crun fails here: "cgroups in hybrid mode not supported"
TOOLS = ("podman", "buildah", "mmdebstrap", "runc")
INSTALL_HINT = "apt-get install podman buildah runc mmdebstrap (Debian; .ci/run does this)"
SERVING = health_pb2.HealthCheckResponse.SERVING


class RuntimeMissing(Exception):
    """The container runtime cannot build or start the image; the message says what is missing."""


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return out


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["podman", "--runtime", RUNTIME, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(),
        check=False,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} ... failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return proc


def build_image() -> str:
    """image/build.sh (cached by input hash); returns the image reference. Raises RuntimeMissing
    with what is missing when the tools are absent or cannot start a container."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise RuntimeMissing(f"container runtime missing: {', '.join(missing)} not on PATH; {INSTALL_HINT}")
    proc = subprocess.run(
        [str(BUILD)], capture_output=True, text=True, timeout=1500, env=env(), cwd=REPO, check=False
    )
    if proc.returncode != 0:
        raise RuntimeMissing(f"image/build.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    print(proc.stderr.strip().splitlines()[-1])  # the image size line
    ref = proc.stdout.strip().splitlines()[-1]
    smoke = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/true", ref, check=False)
    if smoke.returncode != 0:
        raise RuntimeMissing(
            f"the container runtime cannot start a container ({smoke.returncode}): {smoke.stderr[-1500:]}; "
            f"needs runc ({INSTALL_HINT}) and {CONTAINERS_CONF.relative_to(REPO)} (default_ulimits = [])"
        )
    return ref


# -- pod spec -> podman run flags ------------------------------------------------------------------

SECURITY_FIELDS = {
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
    "seccompProfile",
    "privileged",
}


def security_flags(pod_sc: dict[str, Any], container_sc: dict[str, Any]) -> list[str]:
    """The container's effective security context (container fields override the pod's) as
    podman flags. A field this does not translate fails the test: nothing is silently dropped."""
    sc = {**pod_sc, **container_sc}
    unknown = set(sc) - SECURITY_FIELDS
    assert not unknown, f"security context fields the e2e run does not translate: {sorted(unknown)}"
    assert not sc.get("privileged"), "privileged container"
    uid = sc["runAsUser"]
    if sc.get("runAsNonRoot"):
        assert uid != 0, "runAsNonRoot with runAsUser 0"
    flags = ["--user", f"{uid}:{sc.get('runAsGroup', 0)}"]
    if sc.get("readOnlyRootFilesystem"):
        # exactly the pod's mounts: no tmpfs of podman's own on /tmp, /run, /var/tmp
        flags += ["--read-only", "--read-only-tmpfs=false"]
    caps = sc.get("capabilities") or {}
    assert set(caps) <= {"drop", "add"}, caps
    for cap in caps.get("drop") or []:
        flags += ["--cap-drop", cap]
    for cap in caps.get("add") or []:
        flags += ["--cap-add", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    seccomp = (sc.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    assert seccomp in ("RuntimeDefault", "Unconfined"), f"seccompProfile {seccomp}"
    if seccomp == "Unconfined":
        flags += ["--security-opt", "seccomp=unconfined"]
    return flags


def volume_flags(spec: dict[str, Any], container: dict[str, Any], host_dirs: dict[str, Path]) -> list[str]:
    """Each mount: an emptyDir becomes a tmpfs of its sizeLimit; any other volume the host
    directory the test prepared for it (host_dirs[volume name]), read-only where the mount is."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    flags: list[str] = []
    for m in container.get("volumeMounts") or []:
        vol = volumes[m["name"]]
        if "emptyDir" in vol:
            opts = ["type=tmpfs", f"destination={m['mountPath']}", "tmpfs-mode=1777"]
            if vol["emptyDir"].get("sizeLimit"):
                opts.append(f"tmpfs-size={int(parse_bytes(vol['emptyDir']['sizeLimit']))}")
            flags += ["--mount", ",".join(opts)]
            continue
        assert m["name"] in host_dirs, f"no host directory for volume {m['name']}"
        host = host_dirs[m["name"]]
        suffix = ":ro" if m.get("readOnly") else ""
        flags += ["--volume", f"{host}:{m['mountPath']}{suffix}"]
    return flags


def env_flags(container: dict[str, Any], field_values: dict[str, str]) -> list[str]:
    flags: list[str] = []
    for e in container.get("env") or []:
        value = e["value"] if "value" in e else field_values[e["valueFrom"]["fieldRef"]["fieldPath"]]
        flags += ["--env", f"{e['name']}={value}"]
    return flags


def resource_flags(container: dict[str, Any]) -> list[str]:
    limits = (container.get("resources") or {}).get("limits") or {}
    flags: list[str] = []
    if "memory" in limits:
        flags += ["--memory", str(int(parse_bytes(limits["memory"])))]
    assert "cpu" not in limits, "a CPU limit would need --cpus"
    return flags


def entrypoint_flags(container: dict[str, Any]) -> list[str]:
    return ["--entrypoint", json.dumps(container["command"])] if container.get("command") else []


def container_ip(name: str) -> str:
    ip = podman("inspect", "--format", "{{.NetworkSettings.IPAddress}}", name).stdout.strip()
    assert ip, f"container {name} has no IP"
    return ip


def logs(name: str) -> str:
    proc = podman("logs", name, check=False)
    return (proc.stdout + proc.stderr)[-6000:]


# -- the kubelet's gRPC prober ---------------------------------------------------------------------


def grpc_probe(host: str, port: int, service: str, timeout_s: float) -> int | None:
    """One probe as the kubelet sends it: a new connection, one deadline for dial + Check.
    Returns the status, or None when the dial or the call failed or ran out of time."""
    deadline = time.monotonic() + timeout_s
    channel = grpc.insecure_channel(f"{host}:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=max(deadline - time.monotonic(), 0.001)
        )
        return int(resp.status)
    except (grpc.FutureTimeoutError, grpc.RpcError):
        return None
    finally:
        channel.close()


@dataclass
class ProbeResult:
    at: float  # monotonic
    status: int | None
    took: float


class Prober(threading.Thread):
    """One probe of one container on the kubelet's schedule: a probe every periodSeconds (after
    initialDelaySeconds), each within timeoutSeconds; `ready` turns True after successThreshold
    consecutive successes and False after failureThreshold consecutive failures; `failed_at`
    records when failureThreshold consecutive failures happened (liveness: a restart; startup: the
    container is killed); a startup probe stops at its first success, as the kubelet's does."""

    def __init__(self, name: str, probe: dict[str, Any], host: str, *, stop_on_success: bool = False) -> None:
        super().__init__(name=f"prober-{name}", daemon=True)
        grpc_spec = probe["grpc"]
        self.probe_name = name
        self.host = host
        self.port = int(grpc_spec["port"])
        self.service = str(grpc_spec.get("service", ""))
        self.period = float(probe.get("periodSeconds", 10))
        self.timeout_s = float(probe.get("timeoutSeconds", 1))
        self.success_threshold = int(probe.get("successThreshold", 1))
        self.failure_threshold = int(probe.get("failureThreshold", 3))
        self.initial_delay = float(probe.get("initialDelaySeconds", 0))
        self.stop_on_success = stop_on_success
        self.lock = threading.Lock()
        self.results: list[ProbeResult] = []
        self.transitions: list[tuple[float, bool]] = []  # (monotonic, ready)
        self.ready = False
        self.failed_at: list[float] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by is_ready / is_not_ready / snapshot
            self.error = exc
            raise

    def _check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"prober {self.probe_name} crashed: {self.error!r}") from self.error

    def _run(self) -> None:
        successes = failures = 0
        next_at = time.monotonic() + self.initial_delay
        while not self.stopping.wait(max(next_at - time.monotonic(), 0)):
            started = time.monotonic()
            status = grpc_probe(self.host, self.port, self.service, self.timeout_s)
            took = time.monotonic() - started
            ok = status == SERVING and took <= self.timeout_s
            with self.lock:
                self.results.append(ProbeResult(started, status, took))
                if ok:
                    successes, failures = successes + 1, 0
                    if not self.ready and successes >= self.success_threshold:
                        self.ready = True
                        self.transitions.append((started, True))
                else:
                    successes, failures = 0, failures + 1
                    if failures >= self.failure_threshold:
                        if self.ready:
                            self.ready = False
                            self.transitions.append((started, False))
                        if failures == self.failure_threshold:
                            self.failed_at.append(started)
            if ok and self.stop_on_success:
                return
            next_at += self.period

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=self.timeout_s + 5)

    def snapshot(self) -> list[ProbeResult]:
        self._check()
        with self.lock:
            return list(self.results)

    def is_ready(self) -> bool:
        self._check()
        with self.lock:
            return self.ready

    def is_not_ready(self) -> bool:
        self._check()
        with self.lock:
            return bool(self.transitions) and not self.ready


class Stopwatch(threading.Thread):
    """Measures when a service first answers SERVING (a probe every `interval_s`, each with a
    fresh connection): the start-up figures, finer than the kubelet's period."""

    def __init__(self, host: str, port: int, service: str, started: float, interval_s: float = 0.05) -> None:
        super().__init__(name=f"stopwatch-{service}", daemon=True)
        self.host, self.port, self.service = host, port, service
        self.started = started
        self.interval_s = interval_s
        self.serving_after: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            if grpc_probe(self.host, self.port, self.service, 1.0) == SERVING:
                self.serving_after = time.monotonic() - self.started
                return
            self.stopping.wait(self.interval_s)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
