"""Several GPUs in one pod (tensor-parallel): every GPU is watched, and a real Xid is
attributed to the GPU that raised it, not to its neighbour.

Needs two or more GPUs (the `nvidia-h100-x2` kind); skipped otherwise.
Run: ``python3 -m pytest -m gpu -s tests/gpu/test_multi_gpu_real.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.values import Severity
from sidecar.gpu.component import GpuComponent
from sidecar.gpu.config import GpuConfig
from sidecar.testing import RecordingSink, xid31

pytestmark = pytest.mark.gpu
pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py (pynvml) is not installed")


def _gpu_count() -> int:
    try:
        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return 0


@pytest.mark.skipif(_gpu_count() < 2, reason="needs two or more GPUs")
async def test_every_gpu_watched_and_xid_attributed_to_its_gpu(tmp_path: Path) -> None:
    """Both GPUs are in the inventory with their own healthy conditions; an Xid 31 raised on
    the last GPU is recorded under that GPU's UUID only, and readiness stays SERVING."""
    comp = GpuComponent(
        GpuConfig(poll_interval_s=1.0, event_wait_timeout_s=0.2, multi_gpu_model=True),
        simulate=False,
        scenario=None,
        registry=CollectorRegistry(),
        state_dir=tmp_path,
    )
    sink = RecordingSink()
    await comp.start(sink)
    try:
        deadline = time.monotonic() + 15
        while not (comp.listener_alive and "gpu/inventory" in sink.latest):
            assert time.monotonic() < deadline, sink.latest
            await asyncio.sleep(0.02)
        uuids = comp.gpu_uuids()
        print(f"\n[gpu] {len(uuids)} GPUs: {uuids}")
        assert len(uuids) == _gpu_count() >= 2
        for uuid in uuids:
            for signal in ("lost", "ecc", "remap", "recovery_action", "xid", "thermal"):
                r = sink.latest[f"gpu/{uuid}/{signal}"]
                assert r.ok, r
                assert f"gpu/{uuid}" in r.gates
        target = uuids[-1]
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=target)
        child = await asyncio.to_thread(
            subprocess.run,
            xid31.command(),
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        report = json.loads([ln for ln in child.stdout.splitlines() if ln.startswith("{")][-1])
        assert report.get("sync_error") == 700, (report, child.stderr[-1500:])
        deadline = time.monotonic() + 5
        while not any(rec.code == 31 for rec in comp.recent_xids().get(target, [])):
            assert time.monotonic() < deadline, "Xid 31 not received"
            await asyncio.sleep(0.01)
        others = [u for u in uuids if u != target]
        assert not any(rec.code == 31 for u in others for rec in comp.recent_xids().get(u, []))
        xid = sink.latest[f"gpu/{target}/xid"]
        print(f"[gpu] Xid 31 on {target}: {xid.reason} {xid.message}")
        assert xid.reason == "XidProcess31" and xid.severity is Severity.WARNING
        assert all(sink.latest[f"gpu/{u}/xid"].ok for u in others)
        assert not comp.gpu_fault()
    finally:
        await comp.stop()
