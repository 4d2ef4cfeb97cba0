"""A pod rendered from manifests/base, with the sidecar started exactly as its container's
command line says (simulated GPU), answers its own probes: the manifests and the binary agree.

The sidecar container's command, args, env and config (from the ConfigMap its volume names) are
taken from `kubectl kustomize manifests/base`; only what a pod provides and a test machine lacks
is substituted: `trt-health-sidecar` -> `python -m sidecar`, `--simulate` added, the listening
ports replaced by free ones (probes are mapped the same way), every volume mount remapped to a
tmp dir, downward-API values invented, the inference container replaced by a tiny HTTP server on
the port the config's workload URL names, and the API server for Events by a local fake.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.config import defaults
from sidecar.core.errors import EXIT_OK
from sidecar.testing import read_ports_file, wait_until
from sidecar.testing.kube import FakeApiServer
from sidecar.testing.manifests import (
    pod_specs,
    render,
    requires_kubectl,
    sidecar_config,
    sidecar_of,
)

REPO = Path(__file__).resolve().parents[2]
SERVING = health_pb2.HealthCheckResponse.SERVING
SIM_UUID = "GPU-00000000-0000-0000-0000-000000000000"
FIELD_VALUES = {
    "metadata.name": "llm-inference-7d9c5b8f6d-x2x9q",
    "metadata.namespace": "inference",
    "metadata.uid": "3f0e2a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b",
    "spec.nodeName": "gpu-node-17",
}


class MainServer:
    """Stands in for the inference container: 200 on every GET (its readiness endpoint)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def remap(value: Any, mounts: dict[str, Path]) -> Any:
    """Replace a path under a pod mount with the same path under its tmp dir, recursively."""
    if isinstance(value, str):
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(mounts[mount_path]) + value[len(mount_path) :]
        return value
    if isinstance(value, dict):
        return {k: remap(v, mounts) for k, v in value.items()}
    if isinstance(value, list):
        return [remap(v, mounts) for v in value]
    return value


def check(port: int, service: str, timeout_s: float) -> tuple[int | None, float]:
    """One kubelet-style probe: a fresh connection, one deadline for dial + Check."""
    started = time.monotonic()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
        )
        return int(resp.status), time.monotonic() - started
    except grpc.RpcError:
        return None, time.monotonic() - started
    finally:
        channel.close()


def non_loopback_ipv4() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.254.254.254", 1))  # no packet is sent
            ip = str(s.getsockname()[0])
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


@pytest.fixture
def main_server() -> Iterator[MainServer]:
    server = MainServer()
    yield server
    server.close()


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


@requires_kubectl
def test_rendered_pod_answers_its_own_probes(
    tmp_path: Path, main_server: MainServer, api: FakeApiServer
) -> None:
    """startup SERVING within the startupProbe's budget, liveness SERVING, readiness SERVING
    within seconds (demo default, simulated GPU), the main container's workload-liveness probe
    SERVING, each answer within the probe's timeoutSeconds, /metrics on the scraped port, no
    Warning Event on a healthy start, exit 0 on SIGTERM."""
    objs = render("base")
    ((_, spec),) = pod_specs(objs)
    side = sidecar_of(spec)
    main = spec["containers"][0]

    # volumes: every mount of the sidecar becomes a tmp dir
    mounts: dict[str, Path] = {}
    for m in side["volumeMounts"]:
        d = tmp_path / "volumes" / m["name"]
        d.mkdir(parents=True, exist_ok=True)
        mounts[m["mountPath"]] = d
    config_dir = str(Path(defaults.CONFIG_PATH).parent)
    token_dir = mounts["/var/run/secrets/kubernetes.io/serviceaccount"]
    (token_dir / "token").write_text("test-token")
    (token_dir / "namespace").write_text(FIELD_VALUES["metadata.namespace"])

    # config from the ConfigMap the config volume names; the workload URL goes to MainServer
    cfg = remap(sidecar_config(objs, spec), mounts)
    workload = cfg.get("workload") or {}
    if workload.get("enabled") and workload.get("url"):
        url = urlsplit(workload["url"])
        main_ports = {p["containerPort"] for p in main.get("ports") or []}
        assert url.hostname in ("127.0.0.1", "localhost"), "workload probe must use loopback"
        assert url.port in main_ports, "workload URL must name a port of the main container"
        workload["url"] = urlunsplit(url._replace(netloc=f"127.0.0.1:{main_server.port}"))
    (mounts[config_dir] / Path(defaults.CONFIG_PATH).name).write_text(yaml.safe_dump(cfg))

    # command line exactly as the container says, with the substitutions above
    assert side["command"][0] == "trt-health-sidecar"
    # ports 0 (the kernel picks), read back from --ports-file; a scenario file to inject a fault
    ports_file = tmp_path / "ports.json"
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"gpus": [{"index": 0, "uuid": SIM_UUID}]}))
    argv = [sys.executable, "-m", "sidecar", *side["command"][1:], *remap(side.get("args", []), mounts)]
    argv += ["--simulate", "--scenario", str(scenario), "--grpc-port", "0", "--http-port", "0"]
    argv += ["--ports-file", str(ports_file)]
    declared = {p["containerPort"] for p in side["ports"]}
    assert declared == {defaults.GRPC_PORT, defaults.HTTP_PORT}, "exactly the gRPC and HTTP ports"

    env = {k: v for k, v in os.environ.items() if not k.startswith(defaults.ENV_PREFIX)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    for e in side.get("env") or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            env[e["name"]] = FIELD_VALUES[e["valueFrom"]["fieldRef"]["fieldPath"]]
    # in-cluster API server and service-account files -> the fake API server and tmp files
    env["TRT_HEALTH__events__api_server"] = api.url
    env["TRT_HEALTH__events__token_file"] = str(token_dir / "token")
    env["TRT_HEALTH__events__ca_file"] = str(token_dir / "ca.crt")
    env["TRT_HEALTH__events__namespace_file"] = str(token_dir / "namespace")
    env["PYTHONUNBUFFERED"] = "1"

    log_path = tmp_path / "sidecar.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
        )
        try:
            _probe_like_the_kubelet(proc, side, main, ports_file, log_path)
            assert "Kubernetes Events enabled" in log_path.read_text()  # the check below is real
            # witness: a fatal fault injected now is sent as a Warning Event; the emitter sends
            # in order from one queue, so any Warning the start produced came before it
            scenario.write_text(yaml.safe_dump({"gpus": [{"index": 0, "uuid": SIM_UUID, "xid": [79]}]}))

            def warnings() -> list[dict[str, Any]]:
                return [c.body for c in api.snapshot() if c.body.get("type") == "Warning"]

            wait_until(lambda: any(w.get("reason") == "XidFatal79" for w in warnings()), timeout=20)
            assert [w.get("reason") for w in warnings()] == ["XidFatal79"], warnings()
            assert main_server.paths, "the workload probe never reached the main container"
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=20)
            assert rc == EXIT_OK, log_path.read_text()[-4000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _probe_like_the_kubelet(
    proc: subprocess.Popen[str],
    side: dict[str, Any],
    main: dict[str, Any],
    ports_file: Path,
    log_path: Path,
) -> None:
    def alive() -> None:
        if proc.poll() is not None:
            raise AssertionError(f"sidecar exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")

    startup = side["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    started = time.monotonic()

    def bound() -> dict[str, int] | None:
        alive()
        return read_ports_file(ports_file)

    # until the ports file is there the kubelet's probes would fail: part of the startup budget
    ports = wait_until(bound, timeout=budget, what="ports file")
    port_map = {defaults.GRPC_PORT: ports["grpc_port"], defaults.HTTP_PORT: ports["http_port"]}
    http_port = ports["http_port"]

    def serving(probe: dict[str, Any]) -> bool:
        alive()
        g = probe["grpc"]
        status, took = check(port_map[g["port"]], g["service"], float(probe["timeoutSeconds"]))
        if status == SERVING:
            assert took <= probe["timeoutSeconds"], f"{g['service']} answered in {took:.2f}s"
            return True
        return False

    left = budget - (time.monotonic() - started)
    wait_until(lambda: serving(startup), timeout=left, interval=startup["periodSeconds"] / 4)
    startup_s = time.monotonic() - started
    print(f"startup SERVING after {startup_s:.2f}s (budget {budget}s)")
    # liveness: SERVING as soon as the sidecar has started (its own loops only)
    assert serving(side["livenessProbe"]), "liveness not SERVING right after startup"
    # readiness: demo default with a simulated GPU and a healthy main container
    wait_until(lambda: serving(side["readinessProbe"]), timeout=20, interval=0.2)
    print(f"readiness SERVING after {time.monotonic() - started:.2f}s")
    # the probe the main container declares against the sidecar's port
    assert main["livenessProbe"]["grpc"]["port"] in port_map
    wait_until(lambda: serving(main["livenessProbe"]), timeout=10, interval=0.2)
    # repeated probes keep answering within their timeout (no stuck Check)
    for _ in range(5):
        for probe in (side["livenessProbe"], side["readinessProbe"], main["livenessProbe"]):
            assert serving(probe)
    # the kubelet dials the pod IP, not loopback: the sidecar must listen on every address
    ip = non_loopback_ipv4()
    if ip is not None:
        channel = grpc.insecure_channel(f"{ip}:{port_map[defaults.GRPC_PORT]}")
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="liveness"), timeout=2
            )
            assert resp.status == SERVING
        finally:
            channel.close()
    # the scrape target named by the pod annotations serves Prometheus text
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
        body = r.read().decode()
    assert r.status == 200 and "trt_health_" in body
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/readyz", timeout=5) as r:
        assert r.status == 200
