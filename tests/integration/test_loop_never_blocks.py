"""Nothing blocking runs on the event loop that liveness is measured by.

The sidecar's own app runs in-process on a loop in asyncio debug mode with a slow-callback
threshold of 0.1 s: asyncio then logs ``Executing <Handle ...> took N seconds`` for any callback
or task step that held the loop that long. The test drives the paths that do file I/O: a large
engine verified (hashed), kept as the last good copy (a real copy: the keep folder is on another
file system, so no hard link) and replaced by another that verifies (hashed and kept again);
canary rounds; a GPU Xid that latches (and persists the latch). It asserts each path ran (the
kept copy is whole and renewed, canary results arrived, the latch file names the Xid) and that
no slow callback was logged once the app had started; a failure lists the stacks that held the
loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import parse_config
from sidecar.core.values import CheckResult
from sidecar.engine.manifest import EngineManifest, TensorSpec, dump_manifest
from sidecar.engine.plan import make_plan_header
from sidecar.testing.loop import LoopStacks, SlowCallbacks, slow_callbacks
from sidecar.testing.reload import BASE

from .conftest import AppThread, wait_until

SLOW_S = 0.1
# A copy of this much on the loop holds it ~0.2 s even from the page cache into tmpfs (a hash
# ~0.3 s): well over SLOW_S. Sparse after a short head, so writing it costs the test little.
ENGINE_BYTES = 512 << 20
PLAN_VERSION = (10, 13, 0, 35)
XID = 79
DETECTOR = "<Handle sleep(0.15)"  # the detector's own check


@pytest.fixture
def slow() -> Iterator[SlowCallbacks]:
    with slow_callbacks() as handler:
        yield handler


def _write_engine(folder: Path, seed: int) -> Path:
    """A plan of ENGINE_BYTES (header, a little data, then a hole) and its manifest, each
    renamed into place; returns the manifest path."""
    plan, staged = folder / "model.plan", folder / ".model.plan.tmp"
    head = make_plan_header(PLAN_VERSION)[:28] + hashlib.sha256(str(seed).encode()).digest() * 1024
    with staged.open("wb") as f:
        f.write(head)
        f.truncate(ENGINE_BYTES)
    sha = hashlib.sha256()
    with staged.open("rb") as f:
        for chunk in iter(lambda: f.read(16 << 20), b""):
            sha.update(chunk)
    manifest = EngineManifest(
        name="prod",
        file="model.plan",
        directory=folder,
        format="tensorrt-plan",
        sha256=sha.hexdigest(),
        size=ENGINE_BYTES,
        tensorrt_version=".".join(map(str, PLAN_VERSION)),
        compute_capability="9.0",
        inputs=(TensorSpec("x", "float32", (1, 16)),),
    )
    mpath, mstaged = folder / "model.plan.manifest.yaml", folder / ".manifest.tmp"
    dump_manifest(manifest, mstaged)
    os.replace(staged, plan)
    os.replace(mstaged, mpath)
    return mpath


def _write_yaml(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)


def _last(app: AppThread, name: str) -> CheckResult | None:
    return {c.name: c.last for c in app.app.snapshot()[0]}.get(name)


def _reasons(app: AppThread) -> set[str]:
    return {c.last.reason for c in app.app.snapshot()[0]}


def _canary_rounds(app: AppThread) -> float:
    value = app.app.registry.get_sample_value(
        "trt_health_check_runs_total", {"check": "canary", "outcome": "ok"}
    )
    return value or 0.0


def _latched(state: Path) -> bool:
    """The persisted latch store holds the Xid's latch."""
    try:
        doc = json.loads((state / "gpu-latches.json").read_text())
        latches = [x for g in doc["gpus"].values() for x in g["latches"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return any(x.get("reason") == f"XidFatal{XID}" for x in latches)


def test_nothing_blocks_the_loop(tmp_path: Path, slow: SlowCallbacks, other_fs: Path) -> None:
    """A 512 MB engine verified, kept (a real copy) and replaced, canary rounds and a latched
    Xid: every path ran, and asyncio's debug mode saw no callback hold the loop 0.1 s."""
    engines = tmp_path / "engines"
    engines.mkdir()
    manifest = _write_engine(engines, seed=1)
    state = tmp_path / "state"
    scenario = tmp_path / "scenario.yaml"
    _write_yaml(scenario, {"gpus": [{"reset": 0}]})
    keep = other_fs / "last-good"
    doc = {
        **BASE,
        "scenario": str(scenario),
        "state_dir": str(state),
        "canary": {**BASE["canary"], "interval": "0.5s", "allow_fast_interval": True},
        "engines": {
            "list": [{"name": "prod", "manifest": str(manifest)}],
            "tensorrt_version": ".".join(map(str, PLAN_VERSION)),
            "stable_window": "50ms",
            "hash_min_interval": "0s",
            "poll_interval": "0.2s",
            "last_good_dir": str(keep),
        },
    }
    app = AppThread(parse_config(doc))
    app.loop.set_debug(True)
    app.loop.slow_callback_duration = SLOW_S
    with LoopStacks(app.thread) as stacks:
        app.start()
        # Start-up is not under test: SidecarApp.start builds the components (their first
        # imports) on the loop, ~0.1-0.3 s cold; reported to the app's owner. From here on
        # nothing may hold the loop.
        slow.clear()
        try:
            # the detector works: a callback that holds the loop 0.15 s is reported
            app.loop.call_soon_threadsafe(time.sleep, 0.15)
            wait_until(lambda: slow.matching(DETECTOR), timeout=10)
            kept = keep / "prod" / "model.plan"

            def verified() -> bool:
                change = _last(app, "engine/prod/change")
                return change is not None and change.ok and kept.exists()

            # witness: verified, and kept as a copy (another file system), whole
            wait_until(verified, timeout=60)
            wait_until(lambda: kept.stat().st_size == ENGINE_BYTES, timeout=30)
            assert os.stat(kept).st_dev != os.stat(engines / "model.plan").st_dev
            first = kept.stat().st_mtime_ns
            # witness: canary rounds arrived
            wait_until(lambda: getattr(_last(app, "canary"), "reason", "") == "CanaryPassed", timeout=30)
            # replaced by another engine that verifies: hashed again and kept again
            _write_engine(engines, seed=2)
            wait_until(
                lambda: getattr(_last(app, "engine/prod/change"), "reason", "") == "EngineReplaced",
                timeout=60,
            )
            wait_until(lambda: kept.exists() and kept.stat().st_mtime_ns != first, timeout=60)
            # a fatal Xid: latched by the GPU component and persisted in the state dir
            _write_yaml(scenario, {"gpus": [{"reset": 0, "xid": [XID]}]})
            wait_until(lambda: f"XidFatal{XID}" in _reasons(app), timeout=30)
            wait_until(lambda: _latched(state), timeout=30)
            # canary rounds go on with the latch written
            rounds = _canary_rounds(app)
            wait_until(lambda: _canary_rounds(app) >= rounds + 2, timeout=30)
            app.call(asyncio.sleep(0))  # the loop answers
        finally:
            app.stop()
    assert [m for m in slow.seen if DETECTOR not in m] == [], stacks.report()
