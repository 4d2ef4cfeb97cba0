"""A bad engine manifest at start (a ``\\xff`` byte, 20k levels of nesting, an alias bomb):
reported as ``EngineManifestInvalid`` naming the file, the process starts and SIGTERM exits 0
(it hung: startup never SERVING, nothing logged, SIGTERM ignored)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import SidecarProcess, wait_until

BOMB = b"a: &a [x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n".encode() for p, n in zip("abcdef", "bcdefg", strict=True)
)


def manifest_condition(sp: SidecarProcess) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{sp.http_port}/healthz", timeout=2) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:  # 503 while not ready: the body is the same document
        body = exc.read()
    except OSError:
        return None
    doc = json.loads(body)
    cond: dict[str, Any] | None = doc.get("checks", {}).get("engine/prod/manifest")
    return cond


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"name: \xffprod\n", "not UTF-8"),
        (b"name: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested deeper than"),
        (BOMB, "expands to more than"),
    ],
)
def test_bad_manifest_at_start_is_reported_and_sigterm_exits_0(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess], data: bytes, fragment: str
) -> None:
    manifest = tmp_path / "prod.manifest.yaml"
    manifest.write_bytes(data)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {"canary": {"enabled": False}, "engines": {"list": [{"name": "prod", "manifest": str(manifest)}]}}
        )
    )
    sp = sidecar_proc("--simulate", "--config", str(cfg))
    cond = wait_until(lambda: (c := manifest_condition(sp)) and c.get("reason") and c, timeout=15)
    assert cond["reason"] == "EngineManifestInvalid"
    assert str(manifest) in cond["message"] and fragment in cond["message"]
    assert len(cond["message"]) < 400
    assert sp.stop(15, timeout=15) == 0
