"""End to end: the image built from Dockerfile.sidecar (image/build.sh: buildah, a base made
locally with mmdebstrap), run the way the rendered manifests run it.

The sidecar container gets exactly the security context `kubectl kustomize manifests/base`
declares (read from the rendered YAML), a tmpfs where the pod mounts an emptyDir, the ConfigMap's
config.yaml mounted read-only, the memory limit, the env (downward-API values invented), and
`--simulate --scenario` with the scenario file on the engine volume (read-only, as the pod mounts
it). The inference container is a stand-in answering the config's workload URL, in the sidecar's
network namespace (a pod's), started once the startup probe succeeded (native sidecar). Probes
run on the kubelet's schedule from the rendered probes, against the container's IP (the pod IP).

Substituted because this machine has no GPU: the GPU is simulated, and the canary is turned off
(TRT_HEALTH__canary__enabled=false): the image ships no CPU canary runner (it fails closed with
RunnerUnavailable without a GPU, which is right for a GPU pod), so with it on readiness could
never be SERVING here. The GPU layer and the workload probe gate readiness.

Where podman / buildah / runc / mmdebstrap are missing or cannot start a container the tests FAIL
saying what is missing (.ci/run installs them from Debian)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from grpc_health.v1 import health_pb2

from sidecar.config import defaults
from sidecar.testing import wait_until
from sidecar.testing.certs import TestCA
from sidecar.testing.manifests import one, pod_specs, render, sidecar_of
from sidecar.testing.webhook import OPT_IN, decode_patch, models_volume, pod, review
from tests.e2e import runtime
from tests.e2e.runtime import SERVING, Prober, grpc_probe, podman

FIELD_VALUES = {
    "metadata.name": "llm-inference-7d9c5b8f6d-x2x9q",
    "metadata.namespace": "inference",
    "metadata.uid": "3f0e2a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b",
    "spec.nodeName": "gpu-node-17",
}
# building the image from scratch (base + pip install) is part of the first test's setup
pytestmark = pytest.mark.timeout(1800)
CANARY_OFF = "TRT_HEALTH__canary__enabled=false"
DEFAULT_GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds
# The inference container's stand-in: 200 on its readiness path, 404 elsewhere.
MAIN_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == sys.argv[2] else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
FIGURES = (
    Path(os.environ.get("TRT_HEALTH_E2E_FIGURES", "")) if os.environ.get("TRT_HEALTH_E2E_FIGURES") else None
)


@pytest.fixture(scope="module")
def image() -> str:
    try:
        return runtime.build_image()
    except runtime.RuntimeMissing as exc:
        missing = str(exc)
    pytest.fail(missing, pytrace=False)


@pytest.fixture
def names() -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for name in reversed(created):
        podman("rm", "--force", "--time", "0", name, check=False)


def shareable(path: Path, files: dict[str, str | bytes]) -> Path:
    """A host directory for a volume, readable by the container's uid (as a kubelet volume is)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    for name, content in files.items():
        f = path / name
        if isinstance(content, bytes):
            f.write_bytes(content)
        else:
            f.write_text(content)
        f.chmod(0o644)
    return path


def scenario(recovery_action: str) -> str:
    doc = yaml.safe_load((runtime.REPO / "demo" / "scenario.example.yaml").read_text())
    doc["gpus"][0]["recovery_action"] = recovery_action
    return yaml.safe_dump(doc)


def replace_file(path: Path, text: str) -> None:
    """Atomic replace (write + rename), as a volume update arrives."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.rename(path)


def sigterm(name: str, grace_s: float) -> tuple[int, float]:
    """SIGTERM as the kubelet sends it; the exit code and the seconds until exit (at most the
    grace period: the kubelet's SIGKILL follows then)."""
    started = time.monotonic()
    podman("kill", "--signal", "TERM", name)
    proc = subprocess.run(
        ["podman", "--runtime", runtime.RUNTIME, "wait", name],
        capture_output=True,
        text=True,
        env=runtime.env(),
        timeout=grace_s + 10,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1]), took


def until(cond: Any, timeout: float, what: str, container: str) -> None:
    """wait_until, failing with what was awaited and the container's log tail."""
    try:
        wait_until(cond, timeout=timeout, interval=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}\n{runtime.logs(container)}") from None


def test_image_ships_no_driver_libraries(image: str) -> None:
    """libcuda / libnvidia-ml come from the host driver (NVIDIA container runtime), never the image."""
    proc = podman(
        "run", "--rm", "--network", "none", "--user", "0:0", "--entrypoint", "/usr/bin/find", image,
        "/", "-xdev", "(", "-name", "libcuda.so*", "-o", "-name", "libnvidia-ml.so*", ")", "-print",
    )  # fmt: skip
    assert proc.stdout.strip() == "", proc.stdout
    # positive witness: find did search the image's site-packages
    found = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "/usr/bin/find", image,
        "/opt/trt-health", "-name", "cli.py", "-path", "*sidecar*",
    ).stdout  # fmt: skip
    assert "sidecar/cli.py" in found


@dataclass
class SidecarPod:
    spec: dict[str, Any]
    side: dict[str, Any]
    cm: dict[str, Any]
    engine_dir: Path
    name: str
    ip: str
    started: float  # monotonic, just before `podman run`


def start_sidecar(image: str, tmp_path: Path, names: list[str], *, canary: bool) -> SidecarPod:
    """The sidecar container of the rendered base pod, started as its spec says (see the module
    docstring for what is substituted); `canary` False adds CANARY_OFF."""
    objs = render("base")
    ((_, spec),) = pod_specs(objs)
    side = sidecar_of(spec)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in side["volumeMounts"]}

    # the volumes the test provides: ConfigMap (its config.yaml as rendered), engine volume
    # (the scenario), the projected service-account volume
    host_dirs: dict[str, Path] = {}
    config_dir = str(Path(defaults.CONFIG_PATH).parent)
    (config_mount,) = [m for m in side["volumeMounts"] if m["mountPath"] == config_dir]
    assert config_mount.get("readOnly") is True
    cm = one(objs, "ConfigMap", volumes[config_mount["name"]]["configMap"]["name"])
    host_dirs[config_mount["name"]] = shareable(tmp_path / "config", dict(cm["data"]))
    (engine_mount,) = [m for m in side["volumeMounts"] if "persistentVolumeClaim" in volumes[m["name"]]]
    assert engine_mount.get("readOnly") is True
    engine_dir = shareable(tmp_path / "engines", {"scenario.yaml": scenario("none")})
    host_dirs[engine_mount["name"]] = engine_dir
    for name, vol in volumes.items():
        if "projected" in vol and name in mounts:
            host_dirs[name] = shareable(
                tmp_path / name,
                {"token": "e2e-token", "ca.crt": "", "namespace": FIELD_VALUES["metadata.namespace"]},
            )

    sc_name = f"trt-e2e-sidecar-{uuid.uuid4().hex[:8]}"
    scenario_path = f"{engine_mount['mountPath']}/scenario.yaml"
    argv = [
        *runtime.security_flags(spec.get("securityContext") or {}, side["securityContext"]),
        *runtime.volume_flags(spec, side, host_dirs),
        *runtime.env_flags(side, FIELD_VALUES),
        *([] if canary else ["--env", CANARY_OFF]),
        *runtime.resource_flags(side),
        *runtime.entrypoint_flags(side),
        image,
        *side.get("args", []),
        "--simulate", "--scenario", scenario_path,
    ]  # fmt: skip
    started = time.monotonic()
    podman("run", "--detach", "--name", sc_name, *argv)
    names.append(sc_name)
    ip = runtime.container_ip(sc_name)

    return SidecarPod(spec, side, cm, engine_dir, sc_name, ip, started)


@pytest.mark.timeout(1800)
def test_image_runs_as_the_rendered_pod_says(image: str, tmp_path: Path, names: list[str]) -> None:
    """startup SERVING within the startup probe's budget; then readiness Ready; a GPU fault in the
    scenario on the engine volume turns readiness NotReady (kubelet's thresholds) while liveness
    and startup stay SERVING (no restart) and the main container's workload-liveness probe stays
    SERVING; recovery brings readiness back; SIGTERM -> exit 0 within the grace period."""
    pod_ = start_sidecar(image, tmp_path, names, canary=False)
    spec, side, cm, engine_dir = pod_.spec, pod_.side, pod_.cm, pod_.engine_dir
    sc_name, ip, started = pod_.name, pod_.ip, pod_.started
    main = spec["containers"][0]
    main_name = sc_name.replace("sidecar", "main")

    def alive() -> None:
        state = podman("inspect", "--format", "{{.State.Status}}", sc_name).stdout.strip()
        assert state == "running", f"sidecar container {state}:\n{runtime.logs(sc_name)}"

    grpc_port = int(side["startupProbe"]["grpc"]["port"])
    watches = [
        runtime.Stopwatch(ip, grpc_port, side[p]["grpc"]["service"], started)
        for p in ("startupProbe", "readinessProbe")
    ]
    for w in watches:
        w.start()

    # -- startup probe: gates liveness and readiness ------------------------------------------
    startup = Prober("startup", side["startupProbe"], ip, stop_on_success=True)
    startup.start()
    budget = startup.period * startup.failure_threshold
    wait_until(lambda: startup.is_ready() or startup.failed_at or not startup.is_alive(), timeout=budget + 5)
    alive()
    assert startup.is_ready() and not startup.failed_at, f"startup probe failed:\n{runtime.logs(sc_name)}"
    startup_s = startup.transitions[0][0] + startup.snapshot()[-1].took - started
    print(f"start -> startup SERVING (kubelet schedule, period {startup.period:g}s): {startup_s:.2f}s")

    # -- the main container (stand-in) starts now, in the pod's network namespace -------------
    url = urlsplit(yaml.safe_load(cm["data"]["config.yaml"])["workload"]["url"])
    assert url.hostname in ("127.0.0.1", "localhost") and url.port in {
        p["containerPort"] for p in main["ports"]
    }
    main_dir = shareable(tmp_path / "main", {"main.py": MAIN_SERVER})
    podman(
        "run", "--detach", "--name", main_name, "--network", f"container:{sc_name}",
        *runtime.security_flags(spec.get("securityContext") or {}, main["securityContext"]),
        "--volume", f"{main_dir}:/main:ro", "--entrypoint", "python", image,
        "/main/main.py", str(url.port), url.path,
    )  # fmt: skip
    names.append(main_name)

    liveness = Prober("liveness", side["livenessProbe"], ip)
    readiness = Prober("readiness", side["readinessProbe"], ip)
    liveness.start()
    readiness.start()
    probers = [liveness, readiness]
    try:
        until(readiness.is_ready, 60, "readiness never Ready", sc_name)
        ready_s = readiness.transitions[0][0] - started
        print(f"start -> readiness Ready (kubelet schedule, period {readiness.period:g}s): {ready_s:.2f}s")
        wait_until(lambda: not any(w.is_alive() for w in watches), timeout=10, interval=0.05)
        startup_fine, ready_fine = (w.serving_after for w in watches)
        assert startup_fine is not None and ready_fine is not None
        print(f"start -> startup SERVING {startup_fine:.2f}s, -> readiness SERVING {ready_fine:.2f}s (polls)")
        alive()
        workload = Prober("main-liveness", main["livenessProbe"], ip)
        workload.start()
        probers.append(workload)
        wait_until(lambda: len(workload.snapshot()) >= 1, timeout=workload.period + 5, interval=0.05)

        # -- fault: the driver asks for a GPU reset (FATAL at once) ---------------------------
        live_before = len(liveness.snapshot())
        fault_at = time.monotonic()
        replace_file(engine_dir / "scenario.yaml", scenario("gpu_reset"))
        bound = readiness.period * (readiness.failure_threshold + 1) + 5
        until(readiness.is_not_ready, bound, "readiness not NotReady on the fault", sc_name)
        not_ready_s = readiness.transitions[-1][0] - fault_at
        print(f"fault -> readiness NotReady: {not_ready_s:.2f}s")
        # liveness keeps being probed and stays SERVING through the fault (witness: >= 1 probe)
        wait_until(lambda: len(liveness.snapshot()) > live_before, timeout=liveness.period + 5, interval=0.05)
        assert grpc_probe(ip, side["startupProbe"]["grpc"]["port"], side["startupProbe"]["grpc"]["service"],
                          startup.timeout_s) == SERVING, "startup changed on a GPU fault"  # fmt: skip

        # -- recovery: the action is back to none ---------------------------------------------
        replace_file(engine_dir / "scenario.yaml", scenario("none"))
        until(readiness.is_ready, bound + 10, "readiness not back after recovery", sc_name)
        alive()
        wait_until(lambda: len(workload.snapshot()) >= 2, timeout=workload.period + 5, interval=0.05)
    finally:
        for p in probers:
            p.stop()
        for w in watches:
            w.stop()
    log = runtime.logs(sc_name)
    assert not liveness.failed_at and all(r.status == SERVING for r in liveness.snapshot()), log
    assert all(r.status == SERVING for r in workload.snapshot()), "main container liveness failed"
    assert [ready for _, ready in readiness.transitions] == [True, False, True], readiness.transitions
    for p in probers:
        slow = [r.took for r in p.snapshot() if r.took > p.timeout_s]
        assert not slow, f"{p.probe_name} probes over timeoutSeconds: {slow}"

    # -- shutdown: the kubelet stops the main container first, then the sidecar --------------
    podman("rm", "--force", "--time", "0", main_name)
    grace = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
    rc, took = sigterm(sc_name, grace)
    print(f"SIGTERM -> exit {rc} after {took:.2f}s (grace {grace:g}s)")
    assert rc == 0, runtime.logs(sc_name)
    assert took <= grace
    assert '"sidecar stopped"' in runtime.logs(sc_name)
    if FIGURES is not None:
        FIGURES.write_text(
            json.dumps(
                {
                    "startup_serving_s": startup_fine,
                    "readiness_serving_s": ready_fine,
                    "startup_probe_s": startup_s,
                    "readiness_ready_s": ready_s,
                    "fault_not_ready_s": not_ready_s,
                    "sigterm_exit_s": took,
                }
            )
        )


@pytest.mark.timeout(900)
def test_image_without_gpu_fails_closed(image: str, tmp_path: Path, names: list[str]) -> None:
    """With the ConfigMap's config as is (canary on) and no GPU, the image has no canary runner
    (no libcuda, no CPU runner shipped): readiness stays NOT_SERVING, startup and liveness are
    SERVING. This is why the fault test turns the canary off."""
    pod_ = start_sidecar(image, tmp_path, names, canary=True)
    probe = {p: pod_.side[p]["grpc"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}

    def status(p: str) -> int | None:
        return grpc_probe(pod_.ip, int(probe[p]["port"]), probe[p]["service"], 2.0)

    # witness: the canary worker tried every runner and said so
    until(lambda: "RunnerUnavailable" in runtime.logs(pod_.name), 60, "no RunnerUnavailable", pod_.name)
    until(lambda: status("startupProbe") == SERVING, 30, "startup not SERVING", pod_.name)
    assert status("livenessProbe") == SERVING
    assert status("readinessProbe") == health_pb2.HealthCheckResponse.NOT_SERVING, runtime.logs(pod_.name)


@pytest.mark.timeout(900)
def test_webhook_image_command_answers_an_admission_review(
    image: str, tmp_path: Path, names: list[str]
) -> None:
    """The webhook Deployment's container (command, args, env, security context as rendered),
    its TLS Secret on a tmpfs: /healthz over HTTPS on the probe's port, an AdmissionReview for
    an opted-in pod answered with a patch that injects the sidecar image, SIGTERM -> exit 0."""
    objs = render("overlays/webhook")
    deploy = one(objs, "Deployment", "trt-health-webhook")
    spec = deploy["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    svc = one(objs, "Service", "trt-health-webhook")
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc"
    hook = one(objs, "MutatingWebhookConfiguration")["webhooks"][0]["clientConfig"]["service"]

    # the Secret volume: a tmpfs (Secrets are tmpfs-backed), files 0644 (defaultMode)
    shm = Path("/dev/shm")
    assert any(
        line.split()[1] == str(shm) and line.split()[2] == "tmpfs"
        for line in Path("/proc/mounts").read_text().splitlines()
    ), "no tmpfs at /dev/shm for the webhook's TLS Secret"
    secret_dir = shm / f"trt-e2e-{uuid.uuid4().hex[:8]}"
    ca = TestCA(tmp_path)
    files = ca.issue("webhook", sans=(host,))
    try:
        (tls_mount,) = c["volumeMounts"]
        shareable(secret_dir, {"tls.crt": files.cert.read_bytes(), "tls.key": files.key.read_bytes()})
        name = f"trt-e2e-webhook-{uuid.uuid4().hex[:8]}"
        podman(
            "run", "--detach", "--name", name,
            *runtime.security_flags(spec.get("securityContext") or {}, c["securityContext"]),
            *runtime.volume_flags(spec, c, {tls_mount["name"]: secret_dir}),
            *runtime.env_flags(c, FIELD_VALUES),
            *runtime.resource_flags(c),
            *runtime.entrypoint_flags(c),
            image, *c.get("args", []),
        )  # fmt: skip
        names.append(name)
        ip = runtime.container_ip(name)
        ctx = ssl.create_default_context(cafile=str(files.ca))
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == hook.get("targetPort", "https"))

        def request(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
            conn = HTTPSConnection(ip, port, context=ctx, timeout=5)
            conn.sock = ctx.wrap_socket(socket.create_connection((ip, port), timeout=5), server_hostname=host)
            try:
                conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        probe = c["readinessProbe"]["httpGet"]
        assert probe["scheme"] == "HTTPS" and probe["port"] == port

        def healthy() -> bool:
            try:
                return request("GET", probe["path"])[0] == 200
            except OSError:
                state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                assert state == "running", f"webhook container {state}:\n{runtime.logs(name)}"
                return False

        wait_until(healthy, timeout=30, interval=0.1)
        obj = pod(OPT_IN, volumes=[models_volume()])
        req = review(obj)
        status, data = request("POST", hook["path"], json.dumps(req).encode())
        assert status == 200, data
        answer = json.loads(data)
        assert answer["kind"] == "AdmissionReview" and answer["response"]["uid"] == req["request"]["uid"]
        assert answer["response"]["allowed"] is True
        image_env = next(e["value"] for e in c["env"] if e["name"] == "TRT_HEALTH_SIDECAR_IMAGE")
        ops = decode_patch(answer["response"])
        injected = [
            v for op in ops for v in (op["value"] if isinstance(op.get("value"), list) else [op.get("value")])
            if isinstance(v, dict) and v.get("image") == image_env
        ]  # fmt: skip
        assert injected, ops
        grace = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_S))
        rc, took = sigterm(name, grace)
        assert rc == 0, runtime.logs(name)
        assert took <= grace
    finally:
        for f in secret_dir.glob("*"):
            f.unlink()
        if secret_dir.exists():
            secret_dir.rmdir()
