"""The Kubernetes API edge of the Events publisher: create and patch core/v1 ``events`` in the
pod's namespace over stdlib ``http.client``, with the service account's (rotating) token.

The only API calls are those in :data:`API_CALLS` (the manifests' Role grants exactly that).
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from sidecar.publish.event_rules import Series
from sidecar.publish.events_config import EventsConfig

# (API group, resource, verb) of every call this module makes. manifests/base/rbac.yaml and the
# webhook overlay's ClusterRole grant exactly these (tests/integration/test_events.py).
API_CALLS: frozenset[tuple[str, str, str]] = frozenset({("", "events", "create"), ("", "events", "patch")})


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventsApi:
    """Events about the pod ``config.pod_name`` in ``namespace`` (resolved when the emitter
    starts). :meth:`create` and :meth:`patch` raise :class:`ApiError` for an HTTP error, and
    ``OSError`` / ``http.client.HTTPException`` / ``ssl.SSLError`` when the server is not
    reached."""

    def __init__(self, config: EventsConfig) -> None:
        self.config = config
        self.namespace = config.namespace
        self._ssl: ssl.SSLContext | None = None

    def event_body(self, series: Series, name: str) -> dict[str, Any]:
        occ = series.occurrence
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": dict(occ.labels),
                "annotations": dict(occ.annotations),
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.config.pod_name,
                "namespace": self.namespace,
                **({"uid": self.config.pod_uid} if self.config.pod_uid else {}),
            },
            "reason": occ.reason,
            "message": occ.message,
            "type": occ.type,
            "count": series.count,
            "firstTimestamp": rfc3339(series.first_at),
            "lastTimestamp": rfc3339(occ.at),
            "source": {
                "component": self.config.component,
                **({"host": self.config.node_name} if self.config.node_name else {}),
            },
            "reportingComponent": self.config.component,
            "reportingInstance": (self.config.pod_name or self.config.component)[:128],
        }

    def create(self, series: Series) -> None:
        # client-go's naming: <object name>.<unix nanos in hex>
        name = f"{self.config.pod_name[:200]}.{time.time_ns():x}"
        count = series.count
        self._call(
            "POST",
            f"/api/v1/namespaces/{quote(self.namespace)}/events",
            self.event_body(series, name),
            "application/json",
        )
        series.name = name
        series.sent_count = count
        series.pending = series.count != count

    def patch(self, series: Series) -> None:
        assert series.name is not None
        count = series.count
        occ = series.occurrence
        body = {"count": count, "lastTimestamp": rfc3339(occ.at), "message": occ.message}
        self._call(
            "PATCH",
            f"/api/v1/namespaces/{quote(self.namespace)}/events/{quote(series.name)}",
            body,
            "application/strategic-merge-patch+json",
        )
        series.sent_count = count
        series.pending = series.count != count

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
            raise ApiError(resp.status, text[:300])
