"""The latch store seen through the GPU component: order of evidence and fail-closed persistence.

Each test drives the simulated backend and the state dir the way an operator or a fault would,
and asserts the conditions a user sees (``gpu/<uuid>/xid``, ``gpu/state``) and the files left.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.gpu.backend import EventType, GpuEvent, GpuSample
from sidecar.gpu.component import GpuComponent
from sidecar.gpu.simulated import SimulatedBackend
from sidecar.testing.gpu import U0, Harness, fast_config, gating, gpu

STATE = "gpu-latches.json"


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    harness = Harness(tmp_path, fast_config())
    harness.write({"gpus": [gpu(0, reset=0)]})
    yield harness
    await harness.stop()


def xid79() -> GpuEvent:
    return GpuEvent(U0, int(EventType.XID_CRITICAL), 79, wall_time=time.time())


async def test_xid_latched_after_the_baseline_survives_the_reset_seen_at_restart(
    h: Harness,
) -> None:
    """Xid 79 latched (and persisted) after the last sample, then the process dies before a
    sample sees the reset that came with it: the restarted sidecar sees the reset counter
    changed, but the Xid is newer than the persisted baseline, so it stays FATAL."""
    comp = await h.start()
    await h.healthy(f"gpu/{U0}/xid")
    assert isinstance(comp.backend, SimulatedBackend)
    comp.backend.inject_event(xid79())  # the listener latches and saves; no sample follows
    await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    await comp.stop()  # what was saved is what a kill -9 leaves (the listener saved it)
    h.write({"gpus": [gpu(0, reset=1)]})  # the reset arrived together with the Xid
    await h.restart()
    r = await h.until(f"gpu/{U0}/xid", lambda r: True)
    # positive witness: the restarted component saw the reset evidence in that same sample
    assert h.metric("trt_health_gpu_resets_observed_total", uuid=U0) == 1
    assert r.reason == "XidFatal79" and gating(r)
    h.write({"gpus": [gpu(0, reset=2)]})  # a later reset is evidence for it
    await h.healthy(f"gpu/{U0}/xid")


class _XidDuringSample(SimulatedBackend):
    """A simulated backend whose next sample is in flight while an Xid 79 arrives."""

    def __init__(self, h: Harness) -> None:
        super().__init__(h.scenario)
        self.h = h
        self.armed = threading.Event()
        self.delivered = threading.Event()

    def sample(self, uuid: str) -> GpuSample:
        if self.armed.is_set():
            self.armed.clear()
            self.inject_event(xid79())
            deadline = time.monotonic() + 5
            while "XidFatal79" not in getattr(self.h.sink.latest.get(f"gpu/{U0}/xid"), "reason", ""):
                assert time.monotonic() < deadline, "the listener did not latch the Xid"
                time.sleep(0.001)
            self.delivered.set()
        return super().sample(uuid)


async def test_xid_latched_while_a_sample_is_in_flight_survives_the_next_reset(
    h: Harness,
) -> None:
    """An Xid latched while a sample is being taken is newer than that sample's baseline: the
    reset seen by the following sample does not clear it (it may have come after the reset)."""
    await h.scenario.start()
    backend = _XidDuringSample(h)
    h.component = GpuComponent(
        h.config,
        simulate=True,
        scenario=h.scenario,
        registry=h.registry,
        state_dir=h.state_dir,
        boot_id="boot-1",
        backend=backend,
    )
    await h.component.start(h.sink)
    await h.healthy(f"gpu/{U0}/xid")
    backend.armed.set()
    h.write({"gpus": [gpu(0, reset=0, temperature_c=41)]})  # one more sample, same reset count
    await h.until("gpu/inventory", lambda r: backend.delivered.is_set())
    h.write({"gpus": [gpu(0, reset=1)]})
    await h.until(
        f"gpu/{U0}/xid",
        lambda r: h.metric("trt_health_gpu_resets_observed_total", uuid=U0) == 1,
    )
    r = h.sink.latest[f"gpu/{U0}/xid"]
    assert r.reason == "XidFatal79" and gating(r)


async def test_corrupt_state_file_is_kept_aside_and_gates_until_removed(h: Harness) -> None:
    """A non-UTF-8 state file: no crash, gating LatchStoreCorrupt, the bytes kept aside (never
    overwritten), a fresh file written; removing the aside file (operator) clears it."""
    h.state_dir.mkdir()
    bad = b"\xff\xfe" + bytes(range(256)) * 2
    (h.state_dir / STATE).write_bytes(bad)
    await h.start()
    r = await h.reason("gpu/state", "LatchStoreCorrupt")
    assert gating(r) and "corrupt" in r.message and len(r.message) < 1000
    [aside] = h.state_dir.glob(f"{STATE}.corrupt-*")
    assert aside.read_bytes() == bad
    assert json.loads((h.state_dir / STATE).read_text())["version"] == 2
    h.write({"gpus": [gpu(0, reset=0, temperature_c=41)]})  # a sample: still corrupt
    await h.until(f"gpu/{U0}/thermal", lambda r: r.value == 41)
    assert h.sink.latest["gpu/state"].reason == "LatchStoreCorrupt"
    aside.unlink()
    h.write({"gpus": [gpu(0, reset=0, temperature_c=42)]})
    await h.healthy("gpu/state")


@pytest.mark.parametrize(
    "content",
    [
        b'{"version": 1, "gpus": {"GPU-sim-0": {"latches": [{"kind": "xi',
        b"{}",
        b'{"version": 99}',
        b"",
        b"[" * 100000,
    ],
    ids=["truncated", "empty-object", "unknown-version", "empty-file", "deep-nesting"],
)
async def test_unusable_state_file_gates(h: Harness, content: bytes) -> None:
    """Truncated, ``{}``, an unknown version, empty, deeply nested: gating LatchStoreCorrupt and
    the original kept aside byte for byte."""
    h.state_dir.mkdir()
    (h.state_dir / STATE).write_bytes(content)
    await h.start()
    r = await h.reason("gpu/state", "LatchStoreCorrupt")
    assert gating(r)
    [aside] = h.state_dir.glob(f"{STATE}.corrupt-*")
    assert aside.read_bytes() == content


async def test_unwritable_state_dir_at_start_gates(h: Harness, tmp_path: Path) -> None:
    """A state dir that cannot be created (its parent is a regular file, as root too):
    LatchStoreUnwritable at the first sample, before any latch needed writing."""
    (tmp_path / "file").write_text("x")
    h.state_dir = tmp_path / "file" / "state"
    await h.start()
    r = await h.reason("gpu/state", "LatchStoreUnwritable")
    assert gating(r) and "not writable" in r.message


async def test_write_failure_mid_run_gates_until_a_write_succeeds(h: Harness) -> None:
    """The state dir becomes unusable (replaced by a file: writes fail as with a full disk);
    an Xid 79 then cannot be persisted: LatchStoreUnwritable gates; once writable again, the
    latch is written and the condition clears."""
    await h.start()
    await h.healthy("gpu/state")
    shutil.rmtree(h.state_dir)
    h.state_dir.write_text("not a directory")
    h.write({"gpus": [gpu(0, reset=0, xid=[79])]})
    await h.reason(f"gpu/{U0}/xid", "XidFatal79")
    r = await h.reason("gpu/state", "LatchStoreUnwritable")
    assert gating(r)
    h.state_dir.unlink()
    h.write({"gpus": [gpu(0, reset=0, xid=[79], temperature_c=41)]})
    await h.healthy("gpu/state")
    doc = json.loads((h.state_dir / STATE).read_text())
    assert [x["reason"] for x in doc["gpus"][U0]["latches"]] == ["XidFatal79"]
