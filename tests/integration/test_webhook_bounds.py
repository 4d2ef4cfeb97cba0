"""The webhook answers every malformed request with `allowed: true`, including JSON nested
too deeply for the parser (issue #10 item 17)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.testing.webhook import OPT_IN, Client, pod, review

DEEP = 100_000


def _deep_review() -> bytes:
    """A real AdmissionReview whose pod carries a value nested far beyond the parser's limit."""
    text = json.dumps(review(pod(dict(OPT_IN))))
    marker = '"apiVersion": "admission.k8s.io/v1"'
    assert marker in text
    return text.replace(marker, '"deep": ' + "[" * DEEP + "]" * DEEP + ", " + marker, 1).encode()


DEEP_BODIES: dict[str, bytes] = {
    "deep arrays": b"[" * DEEP + b"]" * DEEP,
    "deep objects": b'{"a":' * DEEP + b"1" + b"}" * DEEP,
    "deep inside a review": _deep_review(),
}


@pytest.mark.parametrize("label", sorted(DEEP_BODIES))
def test_deeply_nested_json_is_answered_allowed_with_a_warning(client: Client, label: str) -> None:
    """100,000 levels of nesting: an AdmissionReview answer (allowed, no patch, a warning
    saying why), never a dropped connection; the server keeps answering."""
    resp: dict[str, Any] = client.review(DEEP_BODIES[label])
    assert "patch" not in resp
    assert resp["warnings"] and all(w.startswith("trt-health:") for w in resp["warnings"])
    assert any("nested" in w for w in resp["warnings"])
    assert client.request("GET", "/healthz")[0] == 200
