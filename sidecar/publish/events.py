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

The parts: which transitions become which Event, aggregation and the token bucket
(:mod:`sidecar.publish.event_rules`, pure); the API client (:mod:`sidecar.publish.kube_events_api`);
this module is the listener, its queue and the worker thread.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from sidecar.core.values import Transition
from sidecar.publish.event_rules import (
    ANNOTATION_CONDITION,
    ANNOTATION_GPU_INDEX,
    ANNOTATION_REASON,
    LABEL_GPU_UUID,
    LABEL_SEVERITY,
    REASON_RECOVERED,
    Occurrence,
    Series,
    SeriesBook,
    TokenBucket,
    TransitionJudge,
)
from sidecar.publish.events_config import EventsConfig
from sidecar.publish.kube_events_api import API_CALLS, ApiError, EventsApi

log = logging.getLogger(__name__)

_STOP = object()


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
        self._queue: queue.Queue[object] = queue.Queue(maxsize=config.queue_size)
        self._thread: threading.Thread | None = None
        self._active = False
        self._judge = TransitionJudge(clock)
        self._book = SeriesBook(config.aggregate_window_s)
        self._bucket = TokenBucket(config.burst, config.refill_interval_s)
        self._api = EventsApi(config)
        self._warned_auth = False
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
        occurrence = self._judge.occurrence(transition)
        if occurrence is None:
            return
        try:
            self._queue.put_nowait(occurrence)
        except queue.Full:
            self._events_total.labels("dropped").inc()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve pod identity and API endpoint; start the worker. Returns at once."""
        if not self.config.enabled:
            return
        if not self._api.namespace:
            try:
                self._api.namespace = self.config.namespace_file.read_text().strip()
            except OSError:
                self._api.namespace = ""
        missing = [
            name
            for name, value in (
                ("namespace (POD_NAMESPACE)", self._api.namespace),
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
                "namespace": self._api.namespace,
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
            if isinstance(item, Occurrence):
                self._record(item)
            wait = self._flush()

    def _record(self, occ: Occurrence) -> None:
        if self._book.record(occ):
            self._events_total.labels("aggregated").inc()

    def _flush(self, final: bool = False) -> float | None:
        """Send pending series while tokens last; return seconds until the next attempt."""
        now = time.monotonic()
        next_wait: float | None = None
        for series in self._book.in_send_order():
            if not series.pending:
                continue
            if series.not_before > now and not final:
                delay = series.not_before - now
                next_wait = delay if next_wait is None else min(next_wait, delay)
                continue
            if not self._bucket.take():
                delay = self._bucket.wait_s()
                next_wait = delay if next_wait is None else min(next_wait, delay)
                if final:
                    break
                continue
            self._send(series)
            if series.pending and not final:
                delay = max(series.not_before - time.monotonic(), 0.0)
                next_wait = delay if next_wait is None else min(next_wait, delay)
        return next_wait

    def _send(self, series: Series) -> None:
        try:
            if series.name is None:
                self._create(series)
            else:
                try:
                    self._patch(series)
                except ApiError as exc:
                    if exc.status != 404:  # expired (events have a TTL): create it anew
                        raise
                    series.name = None
                    self._create(series)
        except ApiError as exc:
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

    def _create(self, series: Series) -> None:
        self._api.create(series)
        self._events_total.labels("created").inc()

    def _patch(self, series: Series) -> None:
        self._api.patch(series)
        self._events_total.labels("patched").inc()


__all__ = [
    "ANNOTATION_CONDITION",
    "ANNOTATION_GPU_INDEX",
    "ANNOTATION_REASON",
    "API_CALLS",
    "LABEL_GPU_UUID",
    "LABEL_SEVERITY",
    "REASON_RECOVERED",
    "EventsConfig",
    "KubeEventEmitter",
]
