"""The Kubernetes manifests: rendered with `kubectl kustomize`, validated against the OpenAPI
schemas of the newest Kubernetes release kubernetes-validate ships, and cross-checked against the
sidecar's real ports, paths and service names (sidecar/config/defaults.py, sidecar/core/values.py) and the
injection webhook's container template, so that they cannot drift. Also the Dockerfile's
invariants (no container engine runs here, so it is checked by parsing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar import webhook
from sidecar.config import defaults
from sidecar.publish import events, events_config
from sidecar.testing.manifests import (
    CRD_KINDS,
    EXAMPLES,
    KUSTOMIZATIONS,
    MANIFESTS,
    REPO,
    all_containers,
    check_pod_rules,
    check_security_context,
    env_of,
    k8s_version,
    load_example,
    main_container,
    one,
    pod_specs,
    render,
    requires_kubectl,
    sidecar_config,
    sidecar_of,
    validate,
)

# ----------------------------------------------------------------------------------------------


def test_every_overlay_is_found() -> None:
    """The test matrix covers the base and every overlay the README documents."""
    assert set(KUSTOMIZATIONS) >= {
        "base",
        "overlays/dra",
        "overlays/device-plugin",
        "overlays/webhook",
        "overlays/prometheus-operator",
    }


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_states_minimum_kubernetes_version(directory: str) -> None:
    """Each kustomization says which Kubernetes release it needs, and it is a real release."""
    text = (MANIFESTS / directory / "kustomization.yaml").read_text()
    m = re.search(r"Minimum Kubernetes: 1\.(\d+)", text)
    assert m, f"{directory}: no 'Minimum Kubernetes: 1.NN' line"
    assert 27 <= int(m.group(1)) <= int(k8s_version().split(".")[1])


@requires_kubectl
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_rendered_objects_validate_against_kubernetes_schemas(directory: str) -> None:
    """Every rendered object is valid for the newest Kubernetes schemas (CRD kinds excepted)."""
    objs = render(directory)
    assert objs
    skipped = []
    for obj in objs:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            skipped.append(obj["kind"])
            continue
        validate(obj)
    assert all(k in {k for _, k in CRD_KINDS} for k in skipped)


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_validate_against_kubernetes_schemas(name: str) -> None:
    """The stand-alone examples are valid objects too."""
    for obj in load_example(name):
        validate(obj)


def test_schema_validation_rejects_a_misspelt_probe_field() -> None:
    """The validator is strict: a typo in a probe (not a Kubernetes field) fails."""
    import kubernetes_validate

    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [{"name": "c", "image": "i", "livenessProbe": {"grpc": {"port": 1, "servce": "x"}}}]
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(pod)


@requires_kubectl
@pytest.mark.parametrize(
    "directory",
    [d for d in KUSTOMIZATIONS if d not in ("overlays/webhook", "monitoring")],  # no pods there
)
def test_pods_obey_probe_and_security_rules(directory: str) -> None:
    """Every gRPC probe names a real service on the real port; the sidecar is a native sidecar
    with non-root, read-only, no-privilege settings and small explicit requests."""
    objs = render(directory)
    specs = list(pod_specs(objs))
    assert specs
    for where, spec in specs:
        check_pod_rules(f"{directory} {where}", spec)


@requires_kubectl
def test_sidecar_config_agrees_with_sidecar_defaults() -> None:
    """The ConfigMap's ports and state dir are the sidecar's defaults, and the sidecar's ports."""
    objs = render("base")
    ((_, spec),) = pod_specs(objs)
    cfg = sidecar_config(objs, spec)
    assert cfg["grpc"]["port"] == defaults.GRPC_PORT
    assert cfg["http"]["port"] == defaults.HTTP_PORT
    assert cfg["state_dir"] == defaults.STATE_DIR
    assert set(cfg) <= {
        "grpc",
        "http",
        "policy",
        "gpu",
        "canary",
        "engines",
        "workload",
        "events",
        "state_dir",
    }
    assert cfg["events"]["enabled"] is True
    side = sidecar_of(spec)
    assert side["command"][-1] == "serve"


@requires_kubectl
def test_sidecar_config_parses_with_the_real_config_reader() -> None:
    """The ConfigMap's config.yaml is accepted by the sidecar's own config parser."""
    from sidecar.config import parse_config

    objs = render("base")
    ((_, spec),) = pod_specs(objs)
    cfg = parse_config(sidecar_config(objs, spec))
    assert cfg.grpc.port == defaults.GRPC_PORT


@requires_kubectl
def test_base_sidecar_matches_webhook_template() -> None:
    """The base's sidecar and the webhook-injected sidecar are the same container (probes,
    security context, resources, ports, command, env names, mounts) so neither drifts."""
    objs = render("base")
    ((_, spec),) = pod_specs(objs)
    side = sidecar_of(spec)
    engine = next(m for m in side["volumeMounts"] if m["name"] == "models")
    injected = webhook.sidecar_container(
        webhook.WebhookOptions(Path("c"), Path("k"), side["image"]), engine_mount=engine
    )
    for key in (
        "startupProbe",
        "livenessProbe",
        "readinessProbe",
        "securityContext",
        "resources",
        "ports",
        "command",
        "args",
        "restartPolicy",
        "imagePullPolicy",
        "terminationMessagePolicy",
    ):
        assert side[key] == injected[key], key
    assert side["env"] == injected["env"]
    assert sorted(side["volumeMounts"], key=lambda m: m["name"]) == sorted(
        injected["volumeMounts"], key=lambda m: m["name"]
    )
    volumes = {v["name"]: v for v in spec["volumes"]}
    for vol in webhook.sidecar_volumes(
        webhook.WebhookOptions(Path("c"), Path("k"), "i"), "trt-health-sidecar-config"
    ):
        assert volumes[vol["name"]] == vol, vol["name"]
    assert main_container(spec)["livenessProbe"] == webhook.WORKLOAD_LIVENESS_PROBE


@requires_kubectl
def test_engine_volume_is_shared_read_only() -> None:
    """The sidecar mounts the inference container's engine volume at the same path, read-only."""
    ((_, spec),) = pod_specs(render("base"))
    side = {m["name"]: m for m in sidecar_of(spec)["volumeMounts"]}
    main = {m["name"]: m for m in main_container(spec)["volumeMounts"]}
    assert side["models"]["readOnly"] is True
    assert side["models"]["mountPath"] == main["models"]["mountPath"]


@requires_kubectl
def test_probe_budgets_are_consistent() -> None:
    """Startup allows 30 s; readiness flips within 4 s plus timeouts; liveness never faster
    than 3 periods; timeouts never exceed periods (kubelet: one timeout covers dial + Check)."""
    ((_, spec),) = pod_specs(render("base"))
    side = sidecar_of(spec)
    s, lv, r = side["startupProbe"], side["livenessProbe"], side["readinessProbe"]
    assert s["periodSeconds"] * s["failureThreshold"] >= 30
    assert r["periodSeconds"] * r["failureThreshold"] <= 4
    assert lv["failureThreshold"] >= 3
    for p in (s, lv, r):
        assert p["timeoutSeconds"] <= p["periodSeconds"]
    assert r.get("successThreshold", 1) == 1  # recovery is debounced by the sidecar itself


@requires_kubectl
def test_metrics_scrape_targets_point_at_the_http_port() -> None:
    """Prometheus annotations and the PodMonitor scrape the sidecar's /metrics port."""
    ((_, spec),) = pod_specs(render("base"))
    dep = one(render("base"), "Deployment")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(defaults.HTTP_PORT)
    assert ann["prometheus.io/path"] == "/metrics"
    pm = one(render("overlays/prometheus-operator"), "PodMonitor")
    port_name = pm["spec"]["podMetricsEndpoints"][0]["port"]
    named = {p["name"]: p["containerPort"] for p in sidecar_of(spec)["ports"]}
    assert named[port_name] == defaults.HTTP_PORT
    svc = one(render("base"), "Service")
    assert any(p["targetPort"] == port_name for p in svc["spec"]["ports"])


@requires_kubectl
def test_network_policy_admits_the_sidecar_ports() -> None:
    """The NetworkPolicy selects the pod and opens the health ports (gRPC, metrics)."""
    objs = render("base")
    np = one(objs, "NetworkPolicy")
    dep = one(objs, "Deployment")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= (
        dep["spec"]["template"]["metadata"]["labels"].items()
    )
    ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule.get("ports", [])}
    assert {defaults.GRPC_PORT, defaults.HTTP_PORT} <= ports
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}


@requires_kubectl
def test_base_gives_the_sidecar_no_gpu_and_main_container_one() -> None:
    """Fail closed: without an overlay the sidecar sees no GPU (not every GPU of the node)."""
    ((_, spec),) = pod_specs(render("base"))
    assert env_of(sidecar_of(spec))["NVIDIA_VISIBLE_DEVICES"]["value"] == "void"
    assert "nvidia.com/gpu" not in sidecar_of(spec)["resources"].get("limits", {})


@requires_kubectl
def test_dra_overlay_shares_one_claim_between_both_containers() -> None:
    """DRA: a resource.k8s.io/v1 ResourceClaimTemplate, referenced by the pod, claimed by both
    the inference container and the sidecar; no device-plugin GPU and no env override left."""
    objs = render("overlays/dra")
    rct = one(objs, "ResourceClaimTemplate")
    assert rct["apiVersion"] == "resource.k8s.io/v1"
    ((_, spec),) = pod_specs(objs)
    claims = {c["name"]: c for c in spec["resourceClaims"]}
    assert {c["resourceClaimTemplateName"] for c in claims.values()} == {rct["metadata"]["name"]}
    for c in (sidecar_of(spec), main_container(spec)):
        assert [x["name"] for x in c["resources"]["claims"]] == list(claims), c["name"]
        assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), c["name"]
    assert "NVIDIA_VISIBLE_DEVICES" not in env_of(sidecar_of(spec))


@requires_kubectl
def test_device_plugin_overlay_only_exposes_all_gpus_on_a_whole_node() -> None:
    """Device plugin: NVIDIA_VISIBLE_DEVICES=all only together with requesting every GPU of a
    node pinned by its GPU-count label (so "all" means "this pod's GPUs")."""
    ((_, spec),) = pod_specs(render("overlays/device-plugin"))
    assert env_of(sidecar_of(spec))["NVIDIA_VISIBLE_DEVICES"]["value"] == "all"
    gpus = int(main_container(spec)["resources"]["limits"]["nvidia.com/gpu"])
    assert spec["nodeSelector"]["nvidia.com/gpu.count"] == str(gpus)
    assert "nvidia.com/gpu" not in sidecar_of(spec)["resources"].get("limits", {})


# -- webhook overlay ---------------------------------------------------------------------------


@requires_kubectl
def test_webhook_configuration_is_safe() -> None:
    """The MutatingWebhookConfiguration: v1 reviews, no side effects, short timeout, Ignore on
    failure, never its own namespace, only CREATE of pods, TLS from the cert-manager cert."""
    objs = render("overlays/webhook")
    mwc = one(objs, "MutatingWebhookConfiguration")
    (hook,) = mwc["webhooks"]
    svc = one(objs, "Service", "trt-health-webhook")
    ns = svc["metadata"]["namespace"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Ignore"
    assert 1 <= hook["timeoutSeconds"] <= 10
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    (expr,) = hook["namespaceSelector"]["matchExpressions"]
    assert expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn"
    assert ns in expr["values"]
    client = hook["clientConfig"]["service"]
    assert (client["name"], client["namespace"], client["path"]) == (svc["metadata"]["name"], ns, "/mutate")
    (svc_port,) = svc["spec"]["ports"]
    assert client["port"] == svc_port["port"]
    cert = one(objs, "Certificate")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{cert['metadata']['namespace']}/{cert['metadata']['name']}"
    )
    assert f"{svc['metadata']['name']}.{ns}.svc" in cert["spec"]["dnsNames"]
    issuer = one(objs, "Issuer")
    assert cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]


@requires_kubectl
def test_webhook_deployment_agrees_with_the_webhook_code() -> None:
    """The webhook Deployment runs `webhook` with flags the parser accepts, on the port the
    Service targets, with the TLS secret cert-manager writes, and injects its own image."""
    import argparse

    objs = render("overlays/webhook")
    dep = one(objs, "Deployment", "trt-health-webhook")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    check_security_context("webhook", c)
    assert c["command"] == ["trt-health-sidecar", "webhook"]
    parser = argparse.ArgumentParser()
    webhook.add_webhook_arguments(parser)
    ns = parser.parse_args(c["args"])
    ns.sidecar_image = env_of(c)[webhook.DEFAULT_IMAGE_ENV]["value"]
    opts = webhook.options_from_args(ns)
    assert opts.sidecar_image == c["image"]
    assert opts.port == defaults.WEBHOOK_PORT
    assert {p["containerPort"] for p in c["ports"]} == {opts.port}
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == opts.port
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    secret = next(v for v in spec["volumes"] if v["name"] == "tls")["secret"]["secretName"]
    assert secret == one(objs, "Certificate")["spec"]["secretName"]
    assert str(opts.tls_cert).startswith(mounts["tls"])
    assert spec["automountServiceAccountToken"] is False


@requires_kubectl
def test_validating_policy_checks_what_the_webhook_injects() -> None:
    """The ValidatingAdmissionPolicy and the webhook use the same opt-in rule and the same
    sidecar name; its binding denies and skips the webhook's own namespace."""
    objs = render("overlays/webhook")
    vap = one(objs, "ValidatingAdmissionPolicy")
    binding = one(objs, "ValidatingAdmissionPolicyBinding")
    mwc = one(objs, "MutatingWebhookConfiguration")
    assert binding["spec"]["policyName"] == vap["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert vap["spec"]["matchConditions"] == mwc["webhooks"][0]["matchConditions"]
    cond = vap["spec"]["matchConditions"][0]["expression"]
    assert f"'{webhook.ANNOTATION_INJECT}'" in cond and "== 'true'" in cond
    (rule,) = vap["spec"]["validations"]
    assert f"c.name == '{webhook.SIDECAR_NAME}'" in rule["expression"]
    assert "c.restartPolicy == 'Always'" in rule["expression"]
    svc_ns = one(objs, "Service")["metadata"]["namespace"]
    (expr,) = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert expr["operator"] == "NotIn" and svc_ns in expr["values"]


@requires_kubectl
def test_rbac_grants_exactly_what_the_events_emitter_calls() -> None:
    """The events Role (base) and ClusterRole (webhook overlay) grant create/patch on core
    events and nothing else: exactly sidecar.publish.events.API_CALLS."""
    for directory, kind in (("base", "Role"), ("overlays/webhook", "ClusterRole")):
        roles = [o for o in render(directory) if o["kind"] == kind]
        assert len(roles) == 1, directory
        granted = {
            (group, resource, verb)
            for rule in roles[0]["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        assert granted == set(events.API_CALLS), directory
        assert not any(r.get("resourceNames") for r in roles[0]["rules"])
    objs = render("base")
    binding = one(objs, "RoleBinding")
    ((_, spec),) = pod_specs(objs)
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": spec["serviceAccountName"], "namespace": "inference"}
    ]
    assert spec["automountServiceAccountToken"] is False  # only the sidecar gets a token


@requires_kubectl
def test_only_the_sidecar_mounts_an_api_token() -> None:
    """The projected API token is mounted into the sidecar and no other container."""
    ((_, spec),) = pod_specs(render("base"))
    token_volumes = {
        v["name"]
        for v in spec["volumes"]
        if any("serviceAccountToken" in s for s in v.get("projected", {}).get("sources", []))
    }
    for c in all_containers(spec):
        mounted = {m["name"] for m in c.get("volumeMounts") or []} & token_volumes
        assert bool(mounted) == (c["name"] == webhook.SIDECAR_NAME), c["name"]
    side = sidecar_of(spec)
    path = next(m["mountPath"] for m in side["volumeMounts"] if m["name"] in token_volumes)
    assert Path(path) == events_config.SERVICE_ACCOUNT_DIR


# -- Dockerfile --------------------------------------------------------------------------------


def dockerfile_stages() -> list[tuple[str, list[str]]]:
    """(stage name, instructions) of Dockerfile.sidecar, continuation lines joined."""
    text = (REPO / "Dockerfile.sidecar").read_text()
    lines: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    stages: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            parts = line.split()
            stages.append((parts[3] if len(parts) > 3 else "", []))
        elif stages:
            stages[-1][1].append(line)
    return stages


def final_stages() -> list[tuple[str, list[str]]]:
    """Stages that are image targets (not only build stages): they set an ENTRYPOINT."""
    return [(n, ins) for n, ins in dockerfile_stages() if any(i.startswith("ENTRYPOINT") for i in ins)]


def test_dockerfile_is_multi_stage_with_a_lean_default_and_a_full_target() -> None:
    """Multi-stage; the default target (last stage) and the documented `full` target exist."""
    stages = dockerfile_stages()
    assert len(stages) >= 3
    names = [n for n, _ in stages]
    assert names[-1] == "runtime" and "full" in names and "build" in names
    assert {n for n, _ in final_stages()} == {"runtime", "full"}


def test_dockerfile_targets_run_serve_as_non_root_with_driver_capabilities() -> None:
    """Every image target: numeric non-root USER equal to the manifests' runAsUser, compute and
    utility driver capabilities, no GPU by default, ENTRYPOINT runs `serve`, health ports."""
    for name, ins in final_stages():
        users = [i.split()[1] for i in ins if i.startswith("USER ")]
        assert users, name
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) != 0, name
        assert int(uid) == webhook.SECURITY_CONTEXT["runAsUser"], name
        env = " ".join(i for i in ins if i.startswith("ENV "))
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env, name
        assert "NVIDIA_VISIBLE_DEVICES=void" in env, name
        entry = [i for i in ins if i.startswith("ENTRYPOINT")][-1]
        assert entry.replace(" ", "") == 'ENTRYPOINT["trt-health-sidecar","serve"]', name
        exposed = {int(p) for i in ins if i.startswith("EXPOSE ") for p in i.split()[1:]}
        assert exposed == {defaults.GRPC_PORT, defaults.HTTP_PORT}, name


def test_dockerfile_never_ships_driver_libraries() -> None:
    """No COPY/ADD of libcuda or libnvidia-ml; every pip install is followed by their removal
    from what it installed (a wheel could vendor them)."""
    for _name, ins in dockerfile_stages():
        for i in ins:
            if i.startswith(("COPY", "ADD")):
                assert "libcuda" not in i and "libnvidia-ml" not in i, i
    text = (REPO / "Dockerfile.sidecar").read_text()
    assert "-name 'libcuda.so*' -o -name 'libnvidia-ml.so*'" in text
    assert "rm -rf /usr/local/cuda/compat" in text  # the full image's forward-compat libcuda


def test_dockerignore_sends_only_the_package() -> None:
    """The build context is the package and its metadata only (no .venv, tests, .git)."""
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "**"
    allowed = {ln[1:] for ln in lines if ln.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "sidecar/"}
    copied = {
        i.split()[1]
        for _, ins in dockerfile_stages()
        for i in ins
        if i.startswith("COPY ") and "--from" not in i
    }
    assert copied <= allowed | {"pyproject.toml"}
