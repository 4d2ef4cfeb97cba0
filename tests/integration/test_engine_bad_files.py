"""Engine files that are not what they should be: bad manifests (issue #10 item 7) and files
that are not regular files (issue #10 item 16), in the serving process's checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.engine.config import EngineSpec
from sidecar.model import CheckStatus
from tests.integration.test_engine_files import config, is_, plan_bytes, started

BAD_MANIFESTS = {
    "non-utf8": b"name: prod\nfile: model.plan\nsha256: \xff\xfe\n",
    "deep-nesting": b"name: prod\nfile: model.plan\ninputs: " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
    "deep-mapping": b"name: prod\nfile: " + b"{a: " * 5_000 + b"1" + b"}" * 5_000 + b"\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
async def test_bad_manifest_at_start_is_an_engine_finding(tmp_path: Path, kind: str) -> None:
    """A manifest with a non-UTF-8 byte or deep nesting: the component starts, and the
    manifest condition fails with EngineManifestInvalid and a short message."""
    (tmp_path / "model.plan").write_bytes(plan_bytes())
    m = tmp_path / "model.plan.manifest.yaml"
    m.write_bytes(BAD_MANIFESTS[kind])
    comp, sink = await started(config(EngineSpec("prod", manifest=m)))
    try:
        _, r = await sink.wait_for(is_("manifest", "EngineManifestInvalid"))
        assert r.status is CheckStatus.FAIL
        assert len(r.message) <= 600
        assert str(m) in r.message or "manifest" in r.message
    finally:
        await comp.stop()
