"""Kubernetes Events emitter against a real local HTTP(S) server speaking the events API shape
(POST/PATCH under /api/v1/namespaces/NS/events, bearer token): bodies, aggregation, rate limit,
errors, token rotation, non-blocking listener, and RBAC == the calls the code makes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidecar.config import Section
from sidecar.core.values import Severity, Transition
from sidecar.publish import events, events_config
from sidecar.publish.events import KubeEventEmitter
from sidecar.publish.events_config import EventsConfig, parse_events_config
from sidecar.testing import await_until
from sidecar.testing.certs import TestCA
from sidecar.testing.kube import Call, FakeApiServer
from sidecar.testing.manifests import validate

REPO = Path(__file__).resolve().parents[2]
GPU_UUID = "GPU-0f5d2a3c-1b2c-4d5e-8f90-1234567890ab"
TOKEN = "token-one"


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer()
    yield server
    server.close()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def config(api: FakeApiServer, token_file: Path, **kw: Any) -> EventsConfig:
    base = EventsConfig(
        enabled=True,
        namespace="inference",
        pod_name="llm-inference-7d9c5b8f6d-x2x9q",
        pod_uid="3f0e2a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b",
        node_name="gpu-node-17",
        api_server=api.url,
        token_file=token_file,
        ca_file=token_file.parent / "no-ca.crt",
        namespace_file=token_file.parent / "no-namespace",
    )
    return replace(base, **kw)


def fault(
    healthy: bool | None = False,
    previous: bool | None = True,
    *,
    condition: str = f"gpu/{GPU_UUID}/xid",
    reason: str = "XidFatal79",
    severity: Severity = Severity.FATAL,
    message: str = "GPU has fallen off the bus",
) -> Transition:
    return Transition(
        condition=condition,
        healthy=healthy,
        previous=previous,
        reason=reason,
        message=message,
        at=time.time(),
        labels={"uuid": GPU_UUID, "gpu": "0"},
        severity=severity,
    )


def recovery(**kw: Any) -> Transition:
    return fault(True, False, reason="", message="no Xid for 3 canary passes", **kw)


def failed(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("trt_health_kube_events_total", {"outcome": "failed"}) or 0.0


def verbs(calls: list[Call]) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of each call, as RBAC sees it."""
    out = set()
    for c in calls:
        parts = c.path.strip("/").split("/")
        assert parts[:2] == ["api", "v1"], c.path  # the core group
        resource = parts[4]
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "GET": "get", "DELETE": "delete"}[
            c.method
        ]
        out.add(("", resource, verb))
    return out


# -- config ------------------------------------------------------------------------------------


def test_config_defaults_come_from_downward_api_env_and_in_cluster_service() -> None:
    """Pod identity from POD_*/NODE_NAME, API server from KUBERNETES_SERVICE_HOST (IPv6 too)."""
    env = {
        "POD_NAME": "p",
        "POD_NAMESPACE": "ns",
        "POD_UID": "u",
        "NODE_NAME": "n",
        "KUBERNETES_SERVICE_HOST": "fd00::1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    errors: list[str] = []
    cfg = parse_events_config(Section({"enabled": True}, "events", errors), env)
    assert errors == []
    assert (cfg.pod_name, cfg.namespace, cfg.pod_uid, cfg.node_name) == ("p", "ns", "u", "n")
    assert cfg.api_server == "https://[fd00::1]:443"
    assert cfg.token_file == events_config.SERVICE_ACCOUNT_DIR / "token"
    off = parse_events_config(Section(None, "events", []), {})
    assert off.enabled is False and off.api_server == ""


def test_config_errors_name_their_fields() -> None:
    """Unknown keys, a non-URL api_server and a bad burst are each reported with the field."""
    errors: list[str] = []
    parse_events_config(
        Section(
            {
                "enabled": "maybe",
                "api_server": "kubernetes:443",
                "burst": 0,
                "colour": "red",
                "aggregate_window": "5 minutes",
            },
            "events",
            errors,
        ),
        {},
    )
    joined = "\n".join(errors)
    for fieldname in (
        "events.enabled",
        "events.api_server",
        "events.burst",
        "events.colour",
        "events.aggregate_window",
    ):
        assert fieldname in joined, joined


def test_config_file_values_win_over_env(api: FakeApiServer) -> None:
    """Explicit config keys override the downward-API defaults."""
    cfg = parse_events_config(
        Section({"enabled": True, "namespace": "other", "api_server": "http://x:1/"}, "events", []),
        {"POD_NAMESPACE": "ns"},
    )
    assert cfg.namespace == "other" and cfg.api_server == "http://x:1"


# -- behaviour ---------------------------------------------------------------------------------


async def test_fatal_transition_posts_a_warning_event_on_the_pod(
    api: FakeApiServer, token_file: Path
) -> None:
    """A FATAL transition to failing POSTs one core/v1 Warning Event on the pod with the reason,
    the GPU UUID (message, label, annotation), the bearer token; the body is a valid Event."""
    registry = CollectorRegistry()
    emitter = KubeEventEmitter(config(api, token_file), registry=registry)
    await emitter.start()
    try:
        emitter.on_transition(fault())
        (call,) = await await_until(api.snapshot)
    finally:
        await emitter.stop()
    assert call.method == "POST"
    assert call.path == "/api/v1/namespaces/inference/events"
    assert call.headers["Authorization"] == f"Bearer {TOKEN}"
    assert call.headers["Content-Type"] == "application/json"
    ev = call.body
    validate(ev)
    assert ev["type"] == "Warning"
    assert ev["reason"] == "XidFatal79"
    assert GPU_UUID in ev["message"] and "fallen off the bus" in ev["message"]
    assert ev["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "llm-inference-7d9c5b8f6d-x2x9q",
        "namespace": "inference",
        "uid": "3f0e2a4b-5c6d-4e7f-8a9b-0c1d2e3f4a5b",
    }
    assert ev["metadata"]["namespace"] == "inference"
    assert ev["metadata"]["name"].startswith("llm-inference-7d9c5b8f6d-x2x9q.")
    assert ev["metadata"]["labels"][events.LABEL_GPU_UUID] == GPU_UUID
    assert ev["metadata"]["labels"][events.LABEL_SEVERITY] == "fatal"
    assert ev["metadata"]["annotations"][events.ANNOTATION_CONDITION] == f"gpu/{GPU_UUID}/xid"
    assert ev["metadata"]["annotations"][events.ANNOTATION_GPU_INDEX] == "0"
    assert ev["count"] == 1
    assert ev["source"] == {"component": "trt-health-sidecar", "host": "gpu-node-17"}
    assert registry.get_sample_value("trt_health_kube_events_total", {"outcome": "created"}) == 1


async def test_recovery_posts_a_normal_event_naming_the_earlier_reason(
    api: FakeApiServer, token_file: Path
) -> None:
    """After a reported failure, the recovery is a Normal Event, reason Recovered, which names the
    condition and the reason it had."""
    emitter = KubeEventEmitter(config(api, token_file))
    await emitter.start()
    try:
        emitter.on_transition(fault())
        emitter.on_transition(recovery())
        await await_until(lambda: len(api.snapshot()) == 2)
    finally:
        await emitter.stop()
    warning, normal = (c.body for c in api.snapshot())
    validate(normal)
    assert (warning["type"], normal["type"]) == ("Warning", "Normal")
    assert normal["reason"] == events.REASON_RECOVERED
    assert normal["metadata"]["annotations"][events.ANNOTATION_REASON] == "XidFatal79"
    assert "recovered (was XidFatal79)" in normal["message"] and GPU_UUID in normal["message"]


async def test_only_critical_and_fatal_failures_and_their_recoveries_are_reported(
    api: FakeApiServer, token_file: Path
) -> None:
    """WARNING/INFO failures, first establishments (unknown -> healthy or, for CRITICAL,
    unknown -> failing: a cold start) and recoveries of unreported failures make no Event; a
    CRITICAL failure after healthy does, and a FATAL one even from unknown (restored latch)."""
    emitter = KubeEventEmitter(config(api, token_file))
    await emitter.start()
    try:
        emitter.on_transition(fault(severity=Severity.WARNING, reason="EccCorrectableRate"))
        emitter.on_transition(fault(severity=Severity.INFO, reason="Unmonitored"))
        emitter.on_transition(fault(True, None, reason="CanaryPassed"))
        emitter.on_transition(recovery(condition="canary"))
        emitter.on_transition(
            fault(None, True, reason="Starting", severity=Severity.CRITICAL)
        )  # not a failure state
        emitter.on_transition(  # cold start: never healthy yet
            fault(False, None, condition="workload", reason="Starting", severity=Severity.CRITICAL)
        )
        emitter.on_transition(fault(condition="canary", reason="CanaryMismatch", severity=Severity.CRITICAL))
        emitter.on_transition(fault(False, None, reason="XidFatal79Latched"))
        await await_until(lambda: len(api.snapshot()) == 2)
    finally:
        # stop() queues its marker behind every transition above and sends what is queued
        # before it returns: the witness that each of them was handled
        await emitter.stop()
    assert sorted(c.body["reason"] for c in api.snapshot()) == ["CanaryMismatch", "XidFatal79Latched"]


async def test_flapping_condition_is_aggregated_and_rate_limited(
    api: FakeApiServer, token_file: Path
) -> None:
    """100 fail/recover cycles within a second cost at most `burst` API calls, and the counts
    that could not be sent are carried by later PATCHes (nothing lost, nothing flooded)."""
    registry = CollectorRegistry()
    emitter = KubeEventEmitter(config(api, token_file, burst=4, refill_interval_s=3600.0), registry=registry)
    await emitter.start()
    try:
        for _ in range(100):
            emitter.on_transition(fault())
            emitter.on_transition(recovery())
        await await_until(lambda: len(api.snapshot()) >= 4)
        assert len(api.snapshot()) == 4
    finally:
        await emitter.stop()  # handles every queued transition first (FIFO stop marker)
    calls = api.snapshot()
    assert len(calls) == 4  # the final flush has no token either
    assert registry.get_sample_value("trt_health_kube_events_total", {"outcome": "aggregated"}) > 0


async def test_aggregated_count_reaches_the_api_when_tokens_refill(
    api: FakeApiServer, token_file: Path
) -> None:
    """With a fast refill, repeats PATCH the same Event until its count equals the number of
    occurrences (client-go style aggregation: one Event, count N)."""
    emitter = KubeEventEmitter(config(api, token_file, burst=2, refill_interval_s=0.02))
    await emitter.start()
    try:
        for _ in range(30):
            emitter.on_transition(fault())
            emitter.on_transition(recovery())

        def counts() -> list[tuple[str, int]]:
            with api.lock:
                return sorted((e["type"], e["count"]) for e in api.events.values())

        await await_until(lambda: counts() == [("Normal", 30), ("Warning", 30)])
    finally:
        await emitter.stop()
    with api.lock:
        kinds = sorted((e["type"], e["count"]) for e in api.events.values())
    assert kinds == [("Normal", 30), ("Warning", 30)]
    patches = [c for c in api.snapshot() if c.method == "PATCH"]
    assert patches and all(
        c.headers["Content-Type"] == "application/strategic-merge-patch+json" for c in patches
    )
    assert set(patches[-1].body) == {"count", "lastTimestamp", "message"}


async def test_expired_event_is_recreated(api: FakeApiServer, token_file: Path) -> None:
    """A PATCH answered 404 (the Event expired on the server) falls back to a new POST."""
    emitter = KubeEventEmitter(config(api, token_file, refill_interval_s=0.01))
    await emitter.start()
    try:
        emitter.on_transition(fault())
        emitter.on_transition(recovery())
        await await_until(lambda: len(api.events) == 2)
        with api.lock:
            api.events.clear()
        emitter.on_transition(fault())
        await await_until(lambda: [c.method for c in api.snapshot()][-2:] == ["PATCH", "POST"])
    finally:
        await emitter.stop()
    assert api.snapshot()[-1].body["count"] == 2


async def test_server_errors_are_retried_and_forbidden_is_not(
    api: FakeApiServer, token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 500 is retried after a short backoff and then succeeds; a 403 (no RBAC) is logged once
    with the fix and never retried."""
    api.fail_next = [500]
    registry = CollectorRegistry()
    emitter = KubeEventEmitter(config(api, token_file, timeout_s=0.1), registry=registry)
    await emitter.start()
    try:
        emitter.on_transition(fault())
        await await_until(lambda: len(api.events) == 1)
        assert [c.method for c in api.snapshot()] == ["POST", "POST"]
        api.fail_next = [403, 403]
        emitter.on_transition(fault(condition="canary", reason="CanaryMismatch"))
        emitter.on_transition(fault(condition="gpu/x/ecc", reason="EccUncorrectable"))
        await await_until(lambda: len(api.snapshot()) == 4)
        # witness: both 403s were answered and counted as failed (after the retried 500)
        await await_until(lambda: failed(registry) >= 3)
    finally:
        await emitter.stop()  # handles every queued transition first (FIFO stop marker)
    assert len(api.snapshot()) == 4
    rbac_logs = [r for r in caplog.records if "create and patch on events" in r.getMessage()]
    assert len(rbac_logs) == 1


async def test_rotated_token_is_used(api: FakeApiServer, token_file: Path) -> None:
    """Projected tokens rotate: each call reads the token file again."""
    emitter = KubeEventEmitter(config(api, token_file))
    await emitter.start()
    try:
        emitter.on_transition(fault())
        await await_until(lambda: len(api.snapshot()) == 1)
        await asyncio.to_thread(token_file.write_text, "token-two")
        emitter.on_transition(fault(condition="canary", reason="CanaryMismatch"))
        await await_until(lambda: len(api.snapshot()) == 2)
    finally:
        await emitter.stop()
    assert [c.headers["Authorization"] for c in api.snapshot()] == [
        "Bearer token-one",
        "Bearer token-two",
    ]


async def test_https_with_the_cluster_ca(tmp_path: Path, token_file: Path) -> None:
    """Over HTTPS the server certificate is verified against ca_file (the in-cluster ca.crt)."""
    ca = TestCA(tmp_path, cn="cluster CA")
    api = FakeApiServer(tls=ca)
    try:
        emitter = KubeEventEmitter(config(api, token_file, ca_file=ca.ca_path))
        await emitter.start()
        try:
            emitter.on_transition(fault())
            await await_until(lambda: len(api.events) == 1)
        finally:
            await emitter.stop()
        # an emitter that does not trust that CA sends nothing
        registry = CollectorRegistry()
        untrusted = KubeEventEmitter(config(api, token_file, timeout_s=0.5), registry=registry)
        await untrusted.start()
        try:
            untrusted.on_transition(fault(condition="canary", reason="CanaryMismatch"))
            await await_until(lambda: failed(registry) >= 1)  # witness: it tried, and failed
        finally:
            await untrusted.stop()
        assert len(api.events) == 1
    finally:
        api.close()


async def test_listener_never_blocks_even_when_the_api_hangs(api: FakeApiServer, token_file: Path) -> None:
    """on_transition only enqueues: 2000 calls return while the API hangs (no request of the
    emitter has been answered yet); what does not fit the queue is counted as dropped."""
    api.gate.clear()  # the API hangs until the gate opens
    registry = CollectorRegistry()
    emitter = KubeEventEmitter(config(api, token_file, queue_size=16, timeout_s=2.0), registry=registry)
    await emitter.start()
    try:
        emitter.on_transition(fault(condition="c-first"))
        # witness: the sender is inside its first request, which the hung API holds
        await await_until(lambda: api.waiting >= 1)
        for i in range(1000):
            emitter.on_transition(fault(condition=f"c{i}"))
            emitter.on_transition(recovery(condition=f"c{i}"))
        assert api.snapshot() == []  # all 2000 returned while that request was still hung
        assert registry.get_sample_value("trt_health_kube_events_total", {"outcome": "dropped"}) > 0
    finally:
        api.gate.set()
        await emitter.stop()


async def test_disabled_or_outside_a_pod_sends_nothing(api: FakeApiServer, token_file: Path) -> None:
    """enabled: false, or no pod identity (not in a pod): start() is a no-op, nothing is sent."""
    for cfg in (config(api, token_file, enabled=False), config(api, token_file, pod_name="")):
        emitter = KubeEventEmitter(cfg)
        await emitter.start()
        emitter.on_transition(fault())
        await emitter.stop()
    assert api.snapshot() == []


async def test_namespace_falls_back_to_the_service_account_file(api: FakeApiServer, token_file: Path) -> None:
    """Without POD_NAMESPACE the namespace comes from the service-account namespace file."""
    ns_file = token_file.parent / "namespace"
    ns_file.write_text("from-file\n")
    emitter = KubeEventEmitter(config(api, token_file, namespace="", namespace_file=ns_file))
    await emitter.start()
    try:
        emitter.on_transition(fault())
        (call,) = await await_until(api.snapshot)
    finally:
        await emitter.stop()
    assert call.path == "/api/v1/namespaces/from-file/events"
    assert call.body["involvedObject"]["namespace"] == "from-file"


async def test_stop_flushes_pending_occurrences(api: FakeApiServer, token_file: Path) -> None:
    """Occurrences still queued at stop() are sent (as far as the rate limit allows)."""
    emitter = KubeEventEmitter(config(api, token_file))
    await emitter.start()
    emitter.on_transition(fault())
    emitter.on_transition(fault(condition="canary", reason="CanaryMismatch"))
    await emitter.stop()
    assert sorted(c.body["reason"] for c in api.snapshot()) == ["CanaryMismatch", "XidFatal79"]


# -- RBAC == calls ------------------------------------------------------------------------------


def granted(path: Path) -> set[tuple[str, str, str]]:
    (role,) = [d for d in yaml.safe_load_all(path.read_text()) if d and "Role" in d["kind"] and "rules" in d]
    assert not any(r.get("resourceNames") for r in role["rules"])
    return {
        (g, res, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for res in rule["resources"]
        for v in rule["verbs"]
    }


async def test_rbac_grants_exactly_the_calls_the_emitter_makes(api: FakeApiServer, token_file: Path) -> None:
    """The verbs the emitter really used against the server (create via POST, patch via PATCH,
    on core events) are exactly API_CALLS, which is exactly what both Roles grant."""
    emitter = KubeEventEmitter(config(api, token_file, refill_interval_s=0.01))
    await emitter.start()
    try:
        emitter.on_transition(fault())
        emitter.on_transition(recovery())
        emitter.on_transition(fault())
        await await_until(lambda: any(c.method == "PATCH" for c in api.snapshot()))
    finally:
        await emitter.stop()
    assert verbs(api.snapshot()) == set(events.API_CALLS)
    assert granted(REPO / "manifests/base/rbac.yaml") == set(events.API_CALLS)
    assert granted(REPO / "manifests/overlays/webhook/rbac.yaml") == set(events.API_CALLS)
