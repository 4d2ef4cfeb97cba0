"""Kubernetes Events on the sidecar's own pod for fatal transitions and recoveries.

A Deployment never replaces a NotReady pod, so a GPU fault silently removes capacity unless
something acts. This emitter turns every transition of a CRITICAL/FATAL condition to failing
into a ``Warning`` Event on the pod (reason = the condition's reason, e.g. ``XidFatal79``; the
GPU UUID in the message, a label and an annotation), and the later recovery into a ``Normal``
Event with reason ``Recovered``. Alerts and node agents watch those. CRITICAL conditions are
reported only after they were healthy once, so cold starts (``Starting``, ``LoadingEngine``)
make no noise; FATAL ones always, also a latch restored when the sidecar restarts.

Opt-in (``events: {enabled: true}``). Defaults come from the in-cluster service-account files and
the downward-API variables ``POD_NAME``, ``POD_NAMESPACE``, ``POD_UID``, ``NODE_NAME``.

Never blocks the event loop: :meth:`KubeEventEmitter.on_transition` only enqueues; one worker
thread talks to the API server (stdlib ``http.client``). Repeats of the same (type, reason,
condition) within ``aggregate_window`` PATCH the existing Event's ``count`` instead of creating
new ones, and a token bucket (``burst``, one more per ``refill_interval``) bounds the API calls,
so a flapping condition cannot flood the API server: what exceeds the budget is folded into the
next call's count. The only API calls are ``create`` and ``patch`` of core/v1 ``events`` in the
pod's namespace (:data:`API_CALLS`; the manifests' Role grants exactly that).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from prometheus_client import CollectorRegistry, Counter

from sidecar.core.values import Severity, Transition
from sidecar.publish.events_config import EventsConfig

log = logging.getLogger(__name__)

# (API group, resource, verb) of every call this module makes. manifests/base/rbac.yaml and the
# webhook overlay's ClusterRole grant exactly these (tests/integration/test_events.py).
API_CALLS: frozenset[tuple[str, str, str]] = frozenset({("", "events", "create"), ("", "events", "patch")})

REASON_RECOVERED = "Recovered"
LABEL_GPU_UUID = "trt-health.io/gpu-uuid"
LABEL_SEVERITY = "trt-health.io/severity"
ANNOTATION_CONDITION = "trt-health.io/condition"
ANNOTATION_REASON = "trt-health.io/reason"
ANNOTATION_GPU_INDEX = "trt-health.io/gpu-index"

_UUID_KEYS = ("uuid", "gpu_uuid", "gpu-uuid")
_INDEX_KEYS = ("gpu", "gpu_index", "index")
_LABEL_VALUE_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_MAX_MESSAGE = 1024
_STOP = object()


@dataclass(slots=True)
class _Occurrence:
    """One transition worth an Event, as queued by on_transition."""

    type: str  # Warning | Normal
    reason: str
    condition: str
    message: str
    at: float
    labels: dict[str, str]
    annotations: dict[str, str]


@dataclass(slots=True)
class _Series:
    """An Event on the API server (or about to be) and its local count."""

    occurrence: _Occurrence
    first_at: float
    count: int = 1
    name: str | None = None  # set once created
    sent_count: int = 0
    pending: bool = True
    not_before: float = 0.0  # retry backoff


class _ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KubeEventEmitter:
    """A :class:`~sidecar.core.protocols.TransitionListener` that posts Events about its pod."""

    def __init__(
        self,
        config: EventsConfig,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        self._thread: threading.Thread | None = None
        self._active = False
        self._failing: dict[str, str] = {}  # condition -> reason we reported failing
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._tokens = float(config.burst)
        self._tokens_at = time.monotonic()
        self._namespace = config.namespace
        self._warned_auth = False
        self._ssl: ssl.SSLContext | None = None
        reg = registry if registry is not None else CollectorRegistry()
        self._events_total = Counter(
            "trt_health_kube_events_total",
            "Kubernetes Event API calls and transitions, by outcome: created, patched, failed "
            "(API calls); aggregated (folded into an Event's count), dropped (queue full).",
            ["outcome"],
            registry=reg,
        )

    # -- listener (event loop thread) ------------------------------------------------------

    def on_transition(self, transition: Transition) -> None:
        """Queue an Event for a CRITICAL/FATAL failure or its recovery; never blocks."""
        if not self._active:
            return
        occurrence = self._occurrence(transition)
        if occurrence is None:
            return
        try:
            self._queue.put_nowait(occurrence)
        except queue.Full:
            self._events_total.labels("dropped").inc()

    def _occurrence(self, t: Transition) -> _Occurrence | None:
        # A CRITICAL condition that fails before it was ever healthy is a cold start
        # (Starting, LoadingEngine, server still loading), not news; a FATAL one (e.g. a latch
        # restored after a restart) always is.
        failing = t.healthy is False and (
            t.severity >= Severity.FATAL or (t.severity >= Severity.CRITICAL and t.previous is True)
        )
        if failing:
            self._failing[t.condition] = t.reason
            reason = t.reason or "HealthCheckFailed"
            kind = "Warning"
        elif t.healthy is True and t.previous is False and t.condition in self._failing:
            reason = REASON_RECOVERED
            kind = "Normal"
            failed_reason = self._failing.pop(t.condition)
        else:
            return None
        uuid = next((t.labels[k] for k in _UUID_KEYS if t.labels.get(k)), "")
        index = next((t.labels[k] for k in _INDEX_KEYS if t.labels.get(k)), "")
        message = f"{t.condition}: {t.message}" if t.message else t.condition
        if kind == "Normal":
            message = f"{t.condition} recovered (was {failed_reason})" + (
                f": {t.message}" if t.message else ""
            )
        if uuid:
            message += f" [GPU {uuid}]"
        labels = {LABEL_SEVERITY: t.severity.name.lower()}
        if uuid and _LABEL_VALUE_RE.match(uuid):
            labels[LABEL_GPU_UUID] = uuid
        annotations = {
            ANNOTATION_CONDITION: t.condition,
            ANNOTATION_REASON: t.reason if kind == "Warning" else failed_reason,
        }
        if index:
            annotations[ANNOTATION_GPU_INDEX] = index
        return _Occurrence(
            type=kind,
            reason=reason[:128],
            condition=t.condition,
            message=message[:_MAX_MESSAGE],
            at=t.at or self._clock(),
            labels=labels,
            annotations=annotations,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve pod identity and API endpoint; start the worker. Returns at once."""
        if not self.config.enabled:
            return
        if not self._namespace:
            try:
                self._namespace = self.config.namespace_file.read_text().strip()
            except OSError:
                self._namespace = ""
        missing = [
            name
            for name, value in (
                ("namespace (POD_NAMESPACE)", self._namespace),
                ("pod_name (POD_NAME)", self.config.pod_name),
                ("api_server (KUBERNETES_SERVICE_HOST)", self.config.api_server),
            )
            if not value
        ]
        if missing:
            log.warning(
                "Kubernetes Events disabled: not in a pod or incomplete config",
                extra={"missing": missing},
            )
            return
        self._active = True
        self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
        self._thread.start()
        log.info(
            "Kubernetes Events enabled",
            extra={
                "namespace": self._namespace,
                "pod": self.config.pod_name,
                "api_server": self.config.api_server,
            },
        )

    async def stop(self) -> None:
        """Flush what the rate limit allows (bounded by the request timeout) and stop."""
        self._active = False
        thread, self._thread = self._thread, None
        if thread is None:
            return
        while True:  # never block the event loop: make room for the stop marker if needed
            try:
                self._queue.put_nowait(_STOP)
                break
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self._events_total.labels("dropped").inc()
                except queue.Empty:
                    pass
        await asyncio.to_thread(thread.join, self.config.timeout_s * 2)

    # -- worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        wait: float | None = None
        while True:
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush(final=True)
                return
            if isinstance(item, _Occurrence):
                self._record(item)
            wait = self._flush()

    def _record(self, occ: _Occurrence) -> None:
        key = (occ.type, occ.reason, occ.condition)
        series = self._series.get(key)
        if series is not None and occ.at - series.first_at <= self.config.aggregate_window_s:
            series.count += 1
            series.occurrence = occ
            series.pending = True
            self._events_total.labels("aggregated").inc()
            return
        if len(self._series) >= 1024:  # bound memory: forget the oldest settled series
            settled = [k for k, s in self._series.items() if not s.pending]
            for k in settled[: len(settled) // 2 + 1]:
                del self._series[k]
        self._series[key] = _Series(occurrence=occ, first_at=occ.at)

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            float(self.config.burst),
            self._tokens + (now - self._tokens_at) / self.config.refill_interval_s,
        )
        self._tokens_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _flush(self, final: bool = False) -> float | None:
        """Send pending series while tokens last; return seconds until the next attempt."""
        now = time.monotonic()
        next_wait: float | None = None
        for series in sorted(self._series.values(), key=lambda s: s.occurrence.at):
            if not series.pending:
                continue
            if series.not_before > now and not final:
                delay = series.not_before - now
                next_wait = delay if next_wait is None else min(next_wait, delay)
                continue
            if not self._take_token():
                delay = (1.0 - self._tokens) * self.config.refill_interval_s
                next_wait = delay if next_wait is None else min(next_wait, delay)
                if final:
                    break
                continue
            self._send(series)
            if series.pending and not final:
                delay = max(series.not_before - time.monotonic(), 0.0)
                next_wait = delay if next_wait is None else min(next_wait, delay)
        return next_wait

    def _send(self, series: _Series) -> None:
        try:
            if series.name is None:
                self._create(series)
            else:
                try:
                    self._patch(series)
                except _ApiError as exc:
                    if exc.status != 404:  # expired (events have a TTL): create it anew
                        raise
                    series.name = None
                    self._create(series)
        except _ApiError as exc:
            self._events_total.labels("failed").inc()
            if exc.status in (401, 403):
                series.pending = False  # no retry: it cannot succeed without RBAC
                if not self._warned_auth:
                    self._warned_auth = True
                    log.error(
                        "Kubernetes Events rejected: the pod's ServiceAccount needs a Role "
                        "allowing create and patch on events",
                        extra={"status": exc.status, "error": str(exc)},
                    )
            elif exc.status in (400, 404, 409, 422):
                series.pending = False
                log.warning("Kubernetes Event rejected", extra={"error": str(exc)})
            else:
                series.not_before = time.monotonic() + min(60.0, self.config.timeout_s * 2)
                log.warning("Kubernetes Event not sent; will retry", extra={"error": str(exc)})
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            self._events_total.labels("failed").inc()
            series.not_before = time.monotonic() + min(60.0, self.config.timeout_s * 2)
            log.warning("Kubernetes API unreachable; will retry", extra={"error": str(exc)})

    def _event_body(self, series: _Series, name: str) -> dict[str, Any]:
        occ = series.occurrence
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": self._namespace,
                "labels": dict(occ.labels),
                "annotations": dict(occ.annotations),
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.config.pod_name,
                "namespace": self._namespace,
                **({"uid": self.config.pod_uid} if self.config.pod_uid else {}),
            },
            "reason": occ.reason,
            "message": occ.message,
            "type": occ.type,
            "count": series.count,
            "firstTimestamp": _rfc3339(series.first_at),
            "lastTimestamp": _rfc3339(occ.at),
            "source": {
                "component": self.config.component,
                **({"host": self.config.node_name} if self.config.node_name else {}),
            },
            "reportingComponent": self.config.component,
            "reportingInstance": (self.config.pod_name or self.config.component)[:128],
        }

    def _create(self, series: _Series) -> None:
        # client-go's naming: <object name>.<unix nanos in hex>
        name = f"{self.config.pod_name[:200]}.{time.time_ns():x}"
        count = series.count
        self._call(
            "POST",
            f"/api/v1/namespaces/{quote(self._namespace)}/events",
            self._event_body(series, name),
            "application/json",
        )
        series.name = name
        series.sent_count = count
        series.pending = series.count != count
        self._events_total.labels("created").inc()

    def _patch(self, series: _Series) -> None:
        assert series.name is not None
        count = series.count
        occ = series.occurrence
        body = {"count": count, "lastTimestamp": _rfc3339(occ.at), "message": occ.message}
        self._call(
            "PATCH",
            f"/api/v1/namespaces/{quote(self._namespace)}/events/{quote(series.name)}",
            body,
            "application/strategic-merge-patch+json",
        )
        series.sent_count = count
        series.pending = series.count != count
        self._events_total.labels("patched").inc()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context()
            if self.config.ca_file.exists():
                ctx = ssl.create_default_context(cafile=str(self.config.ca_file))
            self._ssl = ctx
        return self._ssl

    def _call(self, method: str, path: str, body: Mapping[str, Any], content_type: str) -> None:
        url = urlsplit(self.config.api_server)
        headers = {
            "Content-Type": content_type,
            "Accept": "application/json",
            "User-Agent": f"{self.config.component}/events",
        }
        try:  # projected tokens rotate: read the file on every call
            token = self.config.token_file.read_text().strip()
        except OSError:
            token = ""
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(
                url.hostname or "",
                url.port or 443,
                timeout=self.config.timeout_s,
                context=self._ssl_context(),
            )
        else:
            conn = http.client.HTTPConnection(
                url.hostname or "", url.port or 80, timeout=self.config.timeout_s
            )
        try:
            conn.request(method, url.path.rstrip("/") + path, json.dumps(body).encode(), headers)
            resp = conn.getresponse()
            text = resp.read(4096).decode("utf-8", "replace")
        finally:
            conn.close()
        if resp.status >= 300:
            raise _ApiError(resp.status, text[:300])


__all__ = [
    "API_CALLS",
    "EventsConfig",
    "KubeEventEmitter",
]
