"""The injection webhook over real HTTPS with real AdmissionReview v1 JSON: the returned
JSONPatch is applied (RFC 6902) and the patched pod is validated against the Kubernetes schemas
and the sidecar rules; malformed requests are admitted with a warning; the certificate is
reloaded when its files change; `python -m sidecar webhook` logs JSON decisions and exits
cleanly."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar import webhook
from sidecar.config import defaults
from sidecar.core.errors import EXIT_CONFIG, EXIT_OK, EXIT_TLS
from sidecar.core.values import SERVICE_WORKLOAD_LIVENESS
from sidecar.testing import log_records, wait_until
from sidecar.testing.certs import CertFiles, TestCA
from sidecar.testing.manifests import (
    check_pod_rules,
    env_of,
    load_example,
    sidecar_of,
    validate,
)
from sidecar.testing.webhook import (
    IMAGE,
    OPT_IN,
    Client,
    app_container,
    decode_patch,
    models_volume,
    pod,
    review,
)

REPO = Path(__file__).resolve().parents[2]


# -- RFC 6902 ----------------------------------------------------------------------------------


def _tokens(pointer: str) -> list[str]:
    assert pointer == "" or pointer.startswith("/"), pointer
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]


def apply_patch(doc: Any, ops: list[dict[str, Any]]) -> Any:
    """A small RFC 6902 applier (add, remove, replace, test) that fails loudly on bad paths."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _tokens(op["path"])
        target = doc
        for t in parents:
            target = target[int(t)] if isinstance(target, list) else target[t]
        kind = op["op"]
        if kind == "add":
            if isinstance(target, list):
                idx = len(target) if last == "-" else int(last)
                assert 0 <= idx <= len(target), op
                target.insert(idx, copy.deepcopy(op["value"]))
            else:
                assert isinstance(target, dict), op
                target[last] = copy.deepcopy(op["value"])
        elif kind == "remove":
            del target[int(last) if isinstance(target, list) else last]
        elif kind == "replace":
            key = int(last) if isinstance(target, list) else last
            assert isinstance(target, list) or key in target, op
            target[key] = copy.deepcopy(op["value"])
        elif kind == "test":
            assert target[int(last) if isinstance(target, list) else last] == op["value"], op
        else:
            raise AssertionError(f"unexpected op {kind}")
    return doc


def test_patch_applier_follows_rfc6902_examples() -> None:
    """The test's own applier: RFC 6902 appendix examples (add to object / array / '-', escaping)."""
    assert apply_patch({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}]) == {
        "foo": "bar",
        "baz": "qux",
    }
    assert apply_patch({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "q"}]) == {
        "foo": ["bar", "q", "baz"]
    }
    assert apply_patch({"a": [1]}, [{"op": "add", "path": "/a/-", "value": 2}]) == {"a": [1, 2]}
    assert apply_patch({"m": {}}, [{"op": "add", "path": "/m/a~1b~0c", "value": 1}]) == {"m": {"a/b~c": 1}}
    with pytest.raises((KeyError, IndexError, AssertionError)):
        apply_patch({}, [{"op": "add", "path": "/missing/x", "value": 1}])


# -- AdmissionReview and pods ------------------------------------------------------------------


def inject(client: Client, obj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Send a pod through the webhook; return (patched pod, response)."""
    req = review(obj)
    resp = client.review(req)
    assert resp["uid"] == req["request"]["uid"]
    patched = apply_patch(obj, decode_patch(resp))
    validate(patched)
    check_pod_rules("patched pod", patched["spec"])
    return patched, resp


# -- behaviour ---------------------------------------------------------------------------------


def test_opted_in_pod_gets_a_native_sidecar_with_probes_mounts_and_env(client: Client) -> None:
    """An opted-in pod gets the sidecar as an init container with restartPolicy Always, its three
    probes, the engine volume read-only at the main container's path, config, state, env."""
    obj = pod(
        dict(OPT_IN),
        volumes=[models_volume()],
    )
    obj["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "models", "mountPath": "/srv/models", "readOnly": True}
    ]
    patched, resp = inject(client, obj)
    side = sidecar_of(patched["spec"])
    assert side["image"] == IMAGE
    mounts = {m["name"]: m for m in side["volumeMounts"]}
    assert mounts["models"] == {"name": "models", "mountPath": "/srv/models", "readOnly": True}
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    assert volumes[webhook.VOLUME_CONFIG]["configMap"]["name"] == webhook.DEFAULT_CONFIG_MAP
    assert set(env_of(side)) >= {"POD_NAME", "POD_NAMESPACE", "POD_UID", "NODE_NAME"}
    assert patched["metadata"]["annotations"][webhook.ANNOTATION_INJECTED]
    # the pod's other fields are untouched
    assert patched["spec"]["containers"] == obj["spec"]["containers"]
    assert patched["metadata"]["labels"] == obj["metadata"]["labels"]
    # no GPU path chosen: void + a warning
    assert env_of(side)["NVIDIA_VISIBLE_DEVICES"]["value"] == "void"
    assert any("no GPU" in w for w in resp["warnings"])


def test_annotation_keys_are_escaped_in_patch_paths(client: Client) -> None:
    """The injected-marker annotation's '/' is written as '~1' in the JSON Pointer (RFC 6901)."""
    resp = client.review(review(pod(dict(OPT_IN), volumes=[models_volume()])))
    paths = [op["path"] for op in decode_patch(resp)]
    assert "/metadata/annotations/trt-health.io~1injected" in paths
    assert all("trt-health.io/" not in p for p in paths)


def test_opted_out_pods_are_admitted_unchanged(client: Client) -> None:
    """No annotation, or inject=false / True (not exactly "true"): allowed, no patch."""
    for opt in (None, {}, {webhook.ANNOTATION_INJECT: "false"}, {webhook.ANNOTATION_INJECT: "True"}):
        resp = client.review(review(pod(opt)))
        assert "patch" not in resp and "patchType" not in resp, opt
        assert "warnings" not in resp


def test_injection_is_idempotent(client: Client) -> None:
    """A pod that went through the webhook once gets no second patch (reinvocation, re-submit)."""
    patched, _ = inject(client, pod(dict(OPT_IN), volumes=[models_volume()]))
    resp = client.review(review(patched))
    assert "patch" not in resp
    # a pod that already has a container of that name (hand-written sidecar) is left alone too
    manual = pod({webhook.ANNOTATION_INJECT: "true"})
    manual["spec"]["initContainers"] = [sidecar_of(patched["spec"])]
    assert "patch" not in client.review(review(manual))


def test_pod_with_several_containers_and_existing_init_containers(client: Client) -> None:
    """Existing init containers (a regular one and another native sidecar) keep their order and
    the sidecar goes last; the workload-liveness probe lands on the named main container."""
    obj = pod(
        {
            **OPT_IN,
            webhook.ANNOTATION_WORKLOAD_LIVENESS: "true",
            webhook.ANNOTATION_MAIN_CONTAINER: "server",
        },
        initContainers=[
            app_container("fetch-engine", command=["sh", "-c", "true"]),
            app_container("mesh-proxy", restartPolicy="Always"),
        ],
        containers=[app_container("metrics-shim"), app_container("server")],
        volumes=[models_volume(), {"name": "scratch", "emptyDir": {}}],
    )
    patched, _ = inject(client, obj)
    names = [c["name"] for c in patched["spec"]["initContainers"]]
    assert names == ["fetch-engine", "mesh-proxy", webhook.SIDECAR_NAME]
    by_name = {c["name"]: c for c in patched["spec"]["containers"]}
    assert by_name["server"]["livenessProbe"]["grpc"] == {
        "port": defaults.GRPC_PORT,
        "service": SERVICE_WORKLOAD_LIVENESS,
    }
    assert "livenessProbe" not in by_name["metrics-shim"]
    assert [v["name"] for v in patched["spec"]["volumes"]][:2] == ["models", "scratch"]
    # the engine volume is not mounted by any container: default path, read-only
    mounts = {m["name"]: m for m in sidecar_of(patched["spec"])["volumeMounts"]}
    assert mounts["models"]["mountPath"] == webhook.DEFAULT_ENGINE_MOUNT


def test_pod_without_volumes_or_init_containers(client: Client) -> None:
    """A pod with no volumes and no initContainers keys gets both arrays created."""
    obj = pod({webhook.ANNOTATION_INJECT: "true"})
    assert "volumes" not in obj["spec"] and "initContainers" not in obj["spec"]
    patched, resp = inject(client, obj)
    assert [c["name"] for c in patched["spec"]["initContainers"]] == [webhook.SIDECAR_NAME]
    ops = {(op["op"], op["path"]) for op in decode_patch(resp)}
    assert {("add", "/spec/volumes"), ("add", "/spec/initContainers")} <= ops


def test_existing_liveness_probe_is_kept_with_a_warning(client: Client) -> None:
    """The main container's own livenessProbe is never replaced."""
    own = {"httpGet": {"path": "/live", "port": 8000}}
    obj = pod(
        {webhook.ANNOTATION_INJECT: "true", webhook.ANNOTATION_WORKLOAD_LIVENESS: "true"},
        containers=[app_container("inference", livenessProbe=own)],
    )
    patched, resp = inject(client, obj)
    assert patched["spec"]["containers"][0]["livenessProbe"] == own
    assert any("livenessProbe" in w for w in resp["warnings"])


def test_dra_claims_are_shared_with_the_sidecar(client: Client) -> None:
    """A pod whose container references a DRA claim: the sidecar references the same claim (and
    request), without an NVIDIA_VISIBLE_DEVICES override and without a GPU warning."""
    obj = pod(
        {webhook.ANNOTATION_INJECT: "true"},
        resourceClaims=[{"name": "gpu", "resourceClaimTemplateName": "gpu-template"}],
        containers=[app_container("inference", resources={"claims": [{"name": "gpu", "request": "g"}]})],
    )
    patched, resp = inject(client, obj)
    side = sidecar_of(patched["spec"])
    assert side["resources"]["claims"] == [{"name": "gpu", "request": "g"}]
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(side)
    assert not any("GPU" in w for w in resp.get("warnings", []))


def test_example_opt_in_deployment_is_injected_into_a_valid_pod(client: Client) -> None:
    """manifests/examples/opt-in-deployment.yaml's pod template, injected, is a valid pod that
    obeys every sidecar rule, with its DRA claim shared and workload liveness added."""
    (dep,) = load_example("examples/opt-in-deployment.yaml")
    tmpl = dep["spec"]["template"]
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**tmpl["metadata"], "generateName": "embedder-", "namespace": "inference"},
        "spec": tmpl["spec"],
    }
    patched, _ = inject(client, obj)
    side = sidecar_of(patched["spec"])
    assert side["resources"]["claims"] == [{"name": "gpu"}]
    mounts = {m["name"]: m for m in side["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"]
    assert patched["spec"]["containers"][0]["livenessProbe"]["grpc"]["service"] == (SERVICE_WORKLOAD_LIVENESS)


def test_device_plugin_annotation_sets_visible_devices_and_bad_values_are_refused(
    client: Client,
) -> None:
    """`nvidia-visible-devices: all` (whole-node pods) reaches the sidecar's env; a value that
    is not all/void/none/UUIDs/indices is refused with a warning and the sidecar gets void."""
    patched, _ = inject(
        client, pod({webhook.ANNOTATION_INJECT: "true", webhook.ANNOTATION_VISIBLE_DEVICES: "all"})
    )
    assert env_of(sidecar_of(patched["spec"]))["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    uuids = "GPU-0f5d2a3c-1b2c-4d5e-8f90-1234567890ab,GPU-1f5d2a3c-1b2c-4d5e-8f90-1234567890ab"
    patched, _ = inject(
        client, pod({webhook.ANNOTATION_INJECT: "true", webhook.ANNOTATION_VISIBLE_DEVICES: uuids})
    )
    assert env_of(sidecar_of(patched["spec"]))["NVIDIA_VISIBLE_DEVICES"]["value"] == uuids
    patched, resp = inject(
        client,
        pod({webhook.ANNOTATION_INJECT: "true", webhook.ANNOTATION_VISIBLE_DEVICES: "all; rm -rf"}),
    )
    assert env_of(sidecar_of(patched["spec"]))["NVIDIA_VISIBLE_DEVICES"]["value"] == "void"
    assert any(webhook.ANNOTATION_VISIBLE_DEVICES in w for w in resp["warnings"])


def test_missing_engine_volume_and_custom_config_map(client: Client) -> None:
    """An engine-volume annotation naming no pod volume warns (sidecar still injected); the
    config-map annotation picks the ConfigMap."""
    obj = pod(
        {
            webhook.ANNOTATION_INJECT: "true",
            webhook.ANNOTATION_ENGINE_VOLUME: "nope",
            webhook.ANNOTATION_CONFIG_MAP: "my-config",
        }
    )
    patched, resp = inject(client, obj)
    assert any("'nope'" in w for w in resp["warnings"])
    volumes = {v["name"]: v for v in patched["spec"]["volumes"]}
    assert volumes[webhook.VOLUME_CONFIG]["configMap"]["name"] == "my-config"
    assert all(len(w) <= webhook.MAX_WARNING_CHARS for w in resp["warnings"])


MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"{not json"),
    ("binary", bytes(range(256))),
    ("json array", b"[1, 2, 3]"),
    ("json string", b'"AdmissionReview"'),
    ("no request", json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode()),
    (
        "v1beta1",
        json.dumps({**review(pod(dict(OPT_IN))), "apiVersion": "admission.k8s.io/v1beta1"}).encode(),
    ),
    ("wrong kind", json.dumps({**review(pod(dict(OPT_IN))), "kind": "Pod"}).encode()),
]


@pytest.mark.parametrize("label,body", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_bodies_are_allowed_with_a_warning(client: Client, label: str, body: bytes) -> None:
    """Garbage never fails admission nor the server: allowed, no patch, a warning."""
    resp = client.review(body)
    assert "patch" not in resp
    assert resp["warnings"] and all(w.startswith("trt-health:") for w in resp["warnings"])
    assert client.request("GET", "/healthz")[0] == 200


def test_unexpected_requests_are_allowed(client: Client) -> None:
    """Another kind, a subresource, UPDATE, a null object, a pod without containers or with a
    non-object spec: allowed, never patched; the uid is echoed."""
    dep = review(pod(dict(OPT_IN)))
    dep["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    sub = review(pod(dict(OPT_IN)))
    sub["request"]["subResource"] = "status"
    cases = [
        dep,
        sub,
        review(pod(dict(OPT_IN)), operation="UPDATE"),
        review(None),
        review({**pod(dict(OPT_IN)), "spec": {"containers": []}}),
        review({**pod(dict(OPT_IN)), "spec": "nonsense"}),
        review({**pod(dict(OPT_IN)), "spec": {"containers": ["x"]}}),
    ]
    for req in cases:
        resp = client.review(req)
        assert resp["uid"] == req["request"]["uid"]
        assert "patch" not in resp


def test_oversized_and_wrong_routes(client: Client) -> None:
    """A Content-Length beyond the cap is answered (allowed + warning) without reading it; other
    paths are 404; the health endpoint answers."""
    status, data = client.request(
        "POST", "/mutate", b"{}", {"Content-Length": str(webhook.MAX_BODY_BYTES + 1)}
    )
    assert status == 200 and json.loads(data)["response"]["allowed"] is True
    assert client.request("POST", "/nope", b"{}")[0] == 404
    assert client.request("GET", "/nope")[0] == 404
    assert client.request("GET", "/healthz") == (200, b"ok\n")


def test_plaintext_and_abrupt_clients_do_not_break_the_server(
    server: webhook.WebhookServer, client: Client
) -> None:
    """A plaintext HTTP request and a client that hangs up mid-handshake leave the server up."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        try:
            s.recv(100)
        except OSError:
            pass
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x00")
    assert client.request("GET", "/healthz")[0] == 200


def test_certificate_is_reloaded_when_its_files_change(
    server: webhook.WebhookServer,
    client: Client,
    ca: TestCA,
    certs: CertFiles,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """New cert files (atomic renames, as the kubelet's secret update) are served without a
    restart; a half-written pair (key not matching yet) keeps the old certificate."""
    before = client.peer_fingerprint()
    fresh = ca.issue("webhook-renewed", sans=("localhost",))
    other = ca.issue("unrelated", sans=("localhost",))
    # 1. cert renewed, key still the old one: does not load, old cert keeps being served
    tmp = tmp_path / "half.crt"
    tmp.write_bytes(fresh.cert.read_bytes())
    caplog.set_level(logging.WARNING, logger="sidecar.webhook")
    os.replace(tmp, certs.cert)
    # witness: the reloader saw the new files and refused them
    wait_until(lambda: logged(caplog, "new certificate does not load yet"))
    assert client.peer_fingerprint() == before
    assert client.request("GET", "/healthz")[0] == 200
    # 2. key follows: the new certificate is served
    tmp = tmp_path / "new.key"
    tmp.write_bytes(fresh.key.read_bytes())
    os.replace(tmp, certs.key)
    after = wait_until(lambda: (fp := client.peer_fingerprint()) != before and fp)
    expected = hashlib.sha256(ssl.PEM_cert_to_DER_cert(fresh.cert.read_text())).hexdigest()
    assert after == expected
    assert server.certs.reloads == 1
    # 3. files removed: the last good certificate stays
    certs.cert.unlink()
    wait_until(lambda: logged(caplog, "certificate files unreadable"))
    assert client.peer_fingerprint() == after
    del other


def logged(caplog: pytest.LogCaptureFixture, msg: str) -> bool:
    return any(r.getMessage() == msg for r in caplog.records)


# -- the real command line ---------------------------------------------------------------------


def run_cli(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(webhook.DEFAULT_IMAGE_ENV, None)
    opts: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kw}
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "webhook", *args], cwd=REPO, env=env, text=True, **opts
    )


def test_cli_serves_logs_json_decisions_and_exits_cleanly_on_sigterm(
    certs: CertFiles, tmp_path: Path
) -> None:
    """`python -m sidecar webhook` serves HTTPS, logs each decision as one JSON line with the
    uid and outcome, and exits 0 on SIGTERM. It binds port 0 and logs the port it got."""
    log_path = tmp_path / "webhook.log"
    with open(log_path, "w") as log_file:
        proc = run_cli(
            [
                f"--tls-cert={certs.cert}",
                f"--tls-key={certs.key}",
                "--port=0",
                "--bind=127.0.0.1",
                f"--sidecar-image={IMAGE}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> int | None:
            if proc.poll() is not None:
                raise AssertionError(f"webhook exited {proc.returncode}: {log_path.read_text()}")
            rec = next((r for r in log_records(log_path) if r.get("msg") == "webhook listening"), None)
            return int(rec["port"]) if rec else None

        client = Client(wait_until(listening, timeout=15), certs.ca)
        assert client.request("GET", "/healthz")[0] == 200
        req = review(pod(dict(OPT_IN), volumes=[models_volume()]))
        resp = client.review(req)
        assert "patch" in resp
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = log_path.read_text(), ""
    assert proc.returncode == EXIT_OK, out
    records = log_records(log_path)
    decisions = [r for r in records if r.get("uid") == req["request"]["uid"]]
    assert len(decisions) == 1, out + err
    assert decisions[0]["decision"] == "injected"
    assert decisions[0]["pod"] == "llm-inference-7d9c5b8f6d-"
    assert decisions[0]["patch_ops"] >= 3


def test_cli_exit_codes_for_bad_flags_and_missing_certificates(tmp_path: Path, certs: CertFiles) -> None:
    """Missing image → config error naming the flag; unreadable certificate → TLS exit code."""
    proc = run_cli([f"--tls-cert={certs.cert}", f"--tls-key={certs.key}", "--port=0"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_CONFIG
    assert "--sidecar-image" in out + err
    proc = run_cli(
        [
            f"--tls-cert={tmp_path / 'missing.crt'}",
            f"--tls-key={certs.key}",
            "--port=0",
            f"--sidecar-image={IMAGE}",
        ]
    )
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_TLS
    assert "missing.crt" in out + err
