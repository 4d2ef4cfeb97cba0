"""Benchmark 4b: detection latency of the other fault kinds, and the re-hash cost.

Against a real ``serve --simulate`` process (pinned like the others), from the injection to a
Check on a fresh connection returning NOT_SERVING, p50/p99 over the injections:

- **hung canary**: ``canary: {mode: hang}`` in the scenario (the worker really hangs; the
  supervisor SIGKILLs it at the deadline). The scenario change triggers a canary at once, so
  the time is deadline + the supervisor's reaction; the target is deadline + 100 ms.
- **engine file replaced / deleted**, with ``engines.watch: inotify`` and with ``poll`` (the
  NFS / FUSE fallback): a new plan renamed over the verified one (its checksum no longer
  matches the manifest) and the plan deleted, each measured on ``engine/<name>``. Targets:
  ≤ 1 s with inotify, ≤ the poll interval with polling.
- **polled GPU signal** (row-remap failure): the simulated backend re-samples on every
  scenario change, so in simulation this is event-driven; on real NVML the bound is
  ``gpu.poll_interval`` + one sample (~1 ms measured on an H200). Reported for completeness.
- **re-hash cost**: SHA-256 of a 512 MiB file through the engine checker's own hashing code,
  as seconds per GB (a multi-GB engine pays this on every verification; it runs in a thread
  with its own timeout).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench import procs
from bench.detection import NOT_SERVING, SERVING, write_atomic
from bench.loadgen import percentiles
from sidecar.engine.files import sha256_file_blocking
from sidecar.engine.manifest import EngineManifest, TensorSpec, dump_manifest
from sidecar.engine.plan import make_plan_header

UUID = "GPU-00000000-0000-0000-0000-0000000000b1"
ENGINE = "bench"
CANARY_DEADLINE_S = 1.0
ENGINE_POLL_S = 1.0


def _plan(seed: int, size: int = 64 * 1024) -> bytes:
    body = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return make_plan_header((10, 13, 0, 6))[:28] + body[: size - 28]


def _write_engine(folder: Path, data: bytes) -> Path:
    plan = folder / "model.plan"
    tmp = folder / ".model.plan.new"
    tmp.write_bytes(data)
    manifest = EngineManifest(
        name=ENGINE,
        file="model.plan",
        directory=folder,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        tensorrt_version="10.13.0.6",
        compute_capability="9.0",
        inputs=(TensorSpec("x", "float32", (1, 16)),),
    )
    mpath = folder / "model.plan.manifest.yaml"
    dump_manifest(manifest, mpath)
    os.replace(tmp, plan)
    return mpath


def _time_until(cond: Callable[[], bool], timeout: float) -> float | None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if cond():
            return (time.perf_counter() - t0) * 1000
        time.sleep(0.002)
    return None


def _start(work: Path, watch: str, cpus: set[int] | None) -> tuple[procs.Server, Path, Path]:
    folder = work / f"engine-{watch}"
    folder.mkdir()
    manifest = _write_engine(folder, _plan(0))
    scenario = work / f"scenario-{watch}.yaml"
    write_atomic(scenario, yaml.safe_dump({"gpus": [{"index": 0, "uuid": UUID}], "canary": {"mode": "ok"}}))
    config = work / f"config-{watch}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policy": {"fatal_recovery_threshold": 1},
                "gpu": {"poll_interval": "250ms"},
                "canary": {
                    "interval": "1s",
                    "timeout": f"{CANARY_DEADLINE_S}s",
                    "restart_backoff_initial": "100ms",
                    "restart_backoff_max": "200ms",
                },
                "engines": {
                    "list": [{"name": ENGINE, "manifest": str(manifest), "check_memory": False}],
                    "watch": watch,
                    "poll_interval": f"{ENGINE_POLL_S}s",
                    "stable_window": "50ms",
                },
            }
        )
    )
    srv = procs.start_sidecar(
        cpus, "--scenario", str(scenario), "--config", str(config), state_dir=work / f"state-{watch}"
    )
    procs.wait_for(lambda: procs.health_check(srv.addr, "readiness") == SERVING, 60, 0.02)
    return srv, scenario, folder


def _serving(addr: str, service: str) -> bool:
    return bool(procs.health_check(addr, service) == SERVING)


def _not_serving(addr: str, service: str) -> bool:
    return bool(procs.health_check(addr, service) == NOT_SERVING)


def run(*, quick: bool) -> dict[str, Any]:
    n = 8 if quick else 50
    srv_cpus, gen_cpus = procs.cpus()
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)
    work = Path(tempfile.mkdtemp(prefix="bench-detect2-"))
    out: dict[str, Any] = {
        "injections": n,
        "canary_deadline_s": CANARY_DEADLINE_S,
        "engine_poll_s": ENGINE_POLL_S,
    }
    try:
        # hung canary, polled GPU signal, engine changes with inotify
        srv, scenario, folder = _start(work, "inotify", srv_cpus)
        try:
            hang: list[float] = []
            remap: list[float] = []
            for i in range(n):
                write_atomic(
                    scenario,
                    yaml.safe_dump({"gpus": [{"index": 0, "uuid": UUID}], "canary": {"mode": "hang"}}),
                )
                t = _time_until(lambda: _not_serving(srv.addr, "readiness"), 10)
                if t is not None:
                    hang.append(t)
                write_atomic(
                    scenario, yaml.safe_dump({"gpus": [{"index": 0, "uuid": UUID}], "canary": {"mode": "ok"}})
                )
                procs.wait_for(lambda: _serving(srv.addr, "readiness"), 30, 0.02)
                write_atomic(
                    scenario,
                    yaml.safe_dump(
                        {
                            "gpus": [{"index": 0, "uuid": UUID, "remap_failure": True, "reset": 2 * i}],
                            "canary": {"mode": "ok"},
                        }
                    ),
                )
                t = _time_until(lambda: _not_serving(srv.addr, "readiness"), 10)
                if t is not None:
                    remap.append(t)
                time.sleep(0.3)  # a pre-reset sample, then the simulated reset clears the latch
                write_atomic(
                    scenario,
                    yaml.safe_dump(
                        {"gpus": [{"index": 0, "uuid": UUID, "reset": 2 * i + 1}], "canary": {"mode": "ok"}}
                    ),
                )
                procs.wait_for(lambda: _serving(srv.addr, "readiness"), 30, 0.02)
            out["canary_hang"] = percentiles(hang)
            out["polled_remap_failure"] = percentiles(remap)
            out["engine_inotify"] = _engine_rounds(srv, folder, n)
        finally:
            srv.stop()
        srv, scenario, folder = _start(work, "poll", srv_cpus)
        try:
            out["engine_poll"] = _engine_rounds(srv, folder, max(4, n // 5))
        finally:
            srv.stop()
        out["rehash"] = _rehash(work)
    finally:
        if gen_cpus:
            os.sched_setaffinity(0, (srv_cpus or set()) | gen_cpus)
    _print(out)
    return out


def _engine_rounds(srv: procs.Server, folder: Path, n: int) -> dict[str, Any]:
    service = f"engine/{ENGINE}"
    replaced: list[float] = []
    deleted: list[float] = []
    original = (folder / "model.plan").read_bytes()
    for i in range(n):
        # a change after a quiet period: re-verification is rate-limited to one hash per
        # engines.hash_min_interval (1 s), which would otherwise add up to a second here
        time.sleep(1.1)
        tmp = folder / ".swap"
        tmp.write_bytes(_plan(1000 + i))
        os.replace(tmp, folder / "model.plan")
        t = _time_until(lambda: _not_serving(srv.addr, service), 15)
        if t is not None:
            replaced.append(t)
        (folder / "model.plan").write_bytes(original)
        procs.wait_for(lambda: _serving(srv.addr, service), 30, 0.02)
        (folder / "model.plan").unlink()
        t = _time_until(lambda: _not_serving(srv.addr, service), 15)
        if t is not None:
            deleted.append(t)
        tmp.write_bytes(original)
        os.replace(tmp, folder / "model.plan")
        procs.wait_for(lambda: _serving(srv.addr, service), 30, 0.02)
    return {"replaced": percentiles(replaced), "deleted": percentiles(deleted)}


def _rehash(work: Path) -> dict[str, Any]:
    path = work / "big.plan"
    size = 512 * 2**20
    block = os.urandom(2**20)
    with open(path, "wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    sha256_file_blocking(path)  # warm the page cache, as a live volume would be
    t0 = time.perf_counter()
    sha256_file_blocking(path)
    dt = time.perf_counter() - t0
    path.unlink()
    return {"bytes": size, "seconds": dt, "seconds_per_gb": dt / (size / 1e9), "mb_per_s": size / 1e6 / dt}


def _print(out: dict[str, Any]) -> None:
    rows = [
        ("canary_hang", f"hung canary (deadline {CANARY_DEADLINE_S:g} s)"),
        ("polled_remap_failure", "remap failure (simulated)"),
    ]
    for key, label in rows:
        p = out[key]
        print(
            f"  {label:34s} p50 {p.get('p50_ms', 0):7.1f} ms  p99 {p.get('p99_ms', 0):7.1f} ms  (n={int(p.get('n', 0))})"
        )
    for mode in ("inotify", "poll"):
        for kind in ("replaced", "deleted"):
            p = out[f"engine_{mode}"][kind]
            print(
                f"  engine {kind} ({mode}){'':14s} p50 {p.get('p50_ms', 0):7.1f} ms  p99 {p.get('p99_ms', 0):7.1f} ms  (n={int(p.get('n', 0))})"
            )
    r = out["rehash"]
    print(
        f"  re-hash: {r['seconds_per_gb']:.2f} s per GB ({r['mb_per_s']:.0f} MB/s, page cache warm)",
        flush=True,
    )
