"""Benchmark 4: detection latency of a scenario change (an event-driven signal).

``serve --simulate --scenario FILE`` with one healthy simulated GPU. Each injection rewrites the
file atomically (write a temp file, rename it over) with Xid 79 on GPU 0, then measures, from
the rename:

- until a Check on a fresh connection (new channel per poll, polled back to back from another
  core) returns ``NOT_SERVING`` for ``readiness``; the time is taken when that Check returns,
  so it includes one dial + Check;
- until a Watch stream on ``readiness``, opened before the injection, receives ``NOT_SERVING``.

Then the fault is cleared with a simulated GPU reset (the ``reset`` counter changes, which is
what clears the sticky Xid latch), and the next injection waits for ``readiness`` SERVING again.
Only the recovery side is shortened, by a config file (``policy.fatal_recovery_threshold: 1``,
``gpu.poll_interval: 250ms``; the defaults, 3 polls of 5 s, take ~10 s per recovery), so 60
injections fit in a few minutes; the detection of an Xid does not depend on either, it is
event-driven (scenario file change -> simulated NVML event -> policy -> Watch fan-out).
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import procs
from bench.loadgen import percentiles

BENCH_CONFIG = "policy:\n  fatal_recovery_threshold: 1\ngpu:\n  poll_interval: 250ms\n"
UUID = "GPU-00000000-0000-0000-0000-0000000000b0"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def gpu_component_present() -> bool:
    return (procs.REPO / "sidecar" / "gpu" / "component.py").exists()


def scenario_text(xid: list[int], reset: int) -> str:
    return f"gpus:\n  - index: 0\n    uuid: {UUID}\n    xid: {xid}\n    reset: {reset}\ncanary:\n  mode: ok\n"


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".scenario-")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(tmp, path)


class WatchRecorder:
    """A Watch stream read on a thread: (perf_counter, status) per message."""

    def __init__(self, addr: str, service: str) -> None:
        self.channel = grpc.insecure_channel(addr)
        self.q: queue.Queue[tuple[float, int]] = queue.Queue()
        self.call = health_pb2_grpc.HealthStub(self.channel).Watch(
            health_pb2.HealthCheckRequest(service=service)
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for resp in self.call:
                self.q.put((time.perf_counter(), int(resp.status)))
        except grpc.RpcError:
            pass

    def wait_for(self, status: int, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                t, s = self.q.get(timeout=left)
            except queue.Empty:
                return None
            if s == status:
                return t

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


def run(*, quick: bool) -> dict[str, Any]:
    if not gpu_component_present():
        print("  skipped: gpu component absent")
        return {"skipped": "gpu component absent"}
    n = 10 if quick else 60
    srv_cpus, gen_cpus = procs.cpus()
    if gen_cpus:
        os.sched_setaffinity(0, gen_cpus)
    work = Path(tempfile.mkdtemp(prefix="bench-detect-"))
    scenario = work / "scenario.yaml"
    reset = 0
    write_atomic(scenario, scenario_text([], reset))
    config = work / "config.yaml"
    config.write_text(BENCH_CONFIG)
    srv = procs.start_sidecar(
        srv_cpus, "--scenario", str(scenario), "--config", str(config), state_dir=work / "state"
    )
    fresh: list[float] = []
    watch: list[float] = []
    recover: list[float] = []
    misses = 0
    try:
        procs.wait_for(lambda: procs.health_check(srv.addr, "readiness") == SERVING, 30, 0.02)
        for _ in range(n):
            w = WatchRecorder(srv.addr, "readiness")
            if w.wait_for(SERVING, 10) is None:
                raise RuntimeError("Watch did not start with SERVING")
            write_atomic(scenario, scenario_text([79], reset))
            t0 = time.perf_counter()
            t_fresh = None
            while time.perf_counter() - t0 < 5:
                if procs.health_check(srv.addr, "readiness", 1.0) == NOT_SERVING:
                    t_fresh = time.perf_counter()
                    break
            t_watch = w.wait_for(NOT_SERVING, 5)
            w.close()
            if t_fresh is None or t_watch is None:
                misses += 1
            else:
                fresh.append((t_fresh - t0) * 1000)
                watch.append((t_watch - t0) * 1000)
            # clear: a simulated GPU reset clears the sticky Xid latch. The sidecar clears only
            # latches seen by a sample taken before the reset (a fatal Xid that may have come
            # after a reset stays latched), so give the post-Xid sample (one poll interval)
            # time to happen, as a real reset (seconds) always does.
            time.sleep(0.3)
            reset += 1
            t1 = time.perf_counter()
            write_atomic(scenario, scenario_text([], reset))
            procs.wait_for(lambda: procs.health_check(srv.addr, "readiness") == SERVING, 60, 0.01)
            recover.append((time.perf_counter() - t1) * 1000)
    finally:
        srv.stop()
        if gen_cpus:
            os.sched_setaffinity(0, (srv_cpus or set()) | gen_cpus)
    out: dict[str, Any] = {
        "injections": n,
        "misses": misses,
        "fresh_check": percentiles(fresh),
        "watch": percentiles(watch),
        "recovery": percentiles(recover),
    }
    for key, label in (
        ("fresh_check", "Check, fresh connection"),
        ("watch", "Watch stream"),
        ("recovery", "clear -> readiness SERVING"),
    ):
        p = out[key]
        print(
            f"  {label:28s} p50 {p.get('p50_ms', 0):7.1f} ms  p99 {p.get('p99_ms', 0):7.1f} ms  "
            f"max {p.get('max_ms', 0):7.1f} ms  (n={int(p['n'])})",
            flush=True,
        )
    if misses:
        print(f"  misses: {misses}")
    return out
