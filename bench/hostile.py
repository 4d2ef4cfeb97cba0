"""Hostile-client benchmarks: a kubelet-style probe under 5,000 Watch streams, and Watch fan-out.

1. Probe under Watch load: a generator process opens 5,000 Watch streams (10 connections, at
   most 500 waiting for their first message at a time: grpc-core cancels calls that wait too
   long in its pending-request queue, so an all-at-once burst of thousands is partly shed with
   CANCELLED by every grpcio server) on the generator's core; meanwhile a kubelet-style probe — a fresh
   connection per probe, 1 s budget for dial + Check, ten a second, like the kubelet's gRPC
   probe (written in Go when the Go generator is available) — runs for N seconds. Reported:
   streams opened, probe failures, p50/p99/max. Ours runs with ``grpc.max_watchers: 6000`` so
   all 5,000 are admitted (the default cap is 1,000). The same for each stock server.
2. Watch fan-out: 200 Watch streams on ``gpu``, 100 of them cancelled, then ``gpu`` goes
   NOT_SERVING; reported: how many of the 100 survivors received it and when (p50/p99/max from
   the status change). Servers are driven through ``bench.stock_servers`` (ours: the serving
   core, ``SidecarApp`` with no components, statuses set through the real policy).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from bench import procs
from bench.loadgen import Generator, WatchHandle, go_server_argv, percentiles, pin

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def _servers(srv_cpus: set[int] | None, max_watchers: int) -> list[tuple[str, Any]]:
    cfg = Path(tempfile.mkdtemp(prefix="bench-hostile-")) / "config.yaml"
    cfg.write_text(f"grpc:\n  max_watchers: {max_watchers}\n")
    out: list[tuple[str, Any]] = [
        ("ours", lambda: procs.start_sidecar(srv_cpus, "--config", str(cfg))),
        ("stock-sync", lambda: procs.start_stock("sync", srv_cpus)),
        ("stock-asyncio", lambda: procs.start_stock("asyncio", srv_cpus)),
    ]
    go_argv = go_server_argv()
    if go_argv is not None:
        out.append(("grpc-go", lambda: procs.start_announcing("grpc-go", go_argv, srv_cpus)))
    return out


def probe_under_watchers(gen: Generator, *, quick: bool, streams: int = 5000) -> dict[str, Any]:
    srv_cpus, gen_cpus = procs.cpus()
    seconds = 5 if quick else 20
    results: dict[str, Any] = {}
    for name, start in _servers(srv_cpus, streams + 1000):
        srv = start()
        try:
            t0 = time.monotonic()
            watch = gen.start(
                "watch",
                cpus=gen_cpus,
                addr=srv.addr,
                service="readiness",
                conns=10,
                streams=streams,
                ramp=500,
                hold=f"{seconds + 120}s",
            )
            open_s = time.monotonic() - t0
            try:
                res = gen.run(
                    "probe",
                    cpus=gen_cpus,
                    addr=srv.addr,
                    service="liveness",
                    rate=10,
                    duration=f"{seconds}s",
                    timeout="1s",
                )
                res["watch"] = watch.opened
                res["open_seconds"] = open_s
                res["server_rss_mb"] = procs.rss_mb(srv.pid)
                res["server_threads"] = procs.threads(srv.pid)
            finally:
                watch.stop()
            results[name] = res
            lat = res["latency"]
            failed = res["probes"] - int(lat.get("n", 0))
            print(
                f"  {name:14s} {watch.opened.get('opened')}/{streams} Watch streams open "
                f"(refused {watch.opened.get('refused')}, failed {watch.opened.get('failed')}, "
                f"{open_s:.1f} s): probes {res['probes']}, failed {failed}, "
                f"p50 {lat.get('p50_ms', 0):.1f} p99 {lat.get('p99_ms', 0):.1f} "
                f"max {lat.get('max_ms', 0):.1f} ms",
                flush=True,
            )
        finally:
            srv.stop()
    return {"streams": streams, "seconds": seconds, "servers": results}


def _start_niced(gen: Generator, cpus: set[int] | None, mode: str, **flags: Any) -> WatchHandle:
    """``gen.start`` at nice 10: on a two-core machine the attacker shares the generator core
    with the probe, and the probe (the kubelet, on its own node) must not be starved by the
    attacking process rather than by the server under test."""
    pin_fn = pin(cpus)

    def pre() -> None:
        if pin_fn is not None:
            pin_fn()
        os.nice(10)

    proc = subprocess.Popen(
        gen.argv(mode, **flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{gen.name} {mode} exited: {err[-800:]}")
    return WatchHandle(proc, json.loads(line))


def _probe_into(
    box: dict[str, Any], gen: Generator, addr: str, cpus: set[int] | None, seconds: float
) -> None:
    """Kubelet-style probes (fresh connection, 1 s budget, 10/s) for ``seconds``, into ``box``."""
    box.update(
        gen.run(
            "probe", cpus=cpus, addr=addr, service="liveness", rate=10, duration=f"{seconds}s", timeout="1s"
        )
    )


def probe_under_watch_flood(
    gen: Generator, *, quick: bool, streams: int = 5000, servers: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Issue #9 item 2: the kubelet-style probe runs while one connection opens ``streams``
    Watch streams at once (no ramp) against the default cap of 1,000 (the rest are refused
    with RESOURCE_EXHAUSTED). The probe starts first, so it sees the burst itself."""
    srv_cpus, gen_cpus = procs.cpus()
    seconds = 8 if quick else 20
    results: dict[str, Any] = {}
    for name, start in _servers(srv_cpus, 1000):
        if servers is not None and name not in servers:
            continue
        srv = start()
        box: dict[str, Any] = {}
        try:
            prober = threading.Thread(
                target=_probe_into, args=(box, gen, srv.addr, gen_cpus, seconds), daemon=True
            )
            prober.start()
            time.sleep(1.0)  # the probe is running before the burst
            t0 = time.monotonic()
            watch = _start_niced(
                gen,
                gen_cpus,
                "watch",
                addr=srv.addr,
                service="readiness",
                conns=1,
                streams=streams,
                ramp=0,
                hold=f"{seconds + 60}s",
            )
            open_s = time.monotonic() - t0
            try:
                prober.join(seconds + 60)
                res = dict(box)
                res["watch"] = watch.opened
                res["open_seconds"] = open_s
                res["server_rss_mb"] = procs.rss_mb(srv.pid)
                res["server_threads"] = procs.threads(srv.pid)
            finally:
                watch.stop()
        finally:
            srv.stop()
        results[name] = res
        lat = res.get("latency", {})
        failed = res.get("probes", 0) - int(lat.get("n", 0))
        print(
            f"  {name:14s} {streams} Watch at once on 1 connection: opened "
            f"{watch.opened.get('opened')}, refused {watch.opened.get('refused')}, failed "
            f"{watch.opened.get('failed')} ({open_s:.1f} s): probes {res.get('probes')}, "
            f"failed {failed} {res.get('failed_examples', [])[:3]}, "
            f"p50 {lat.get('p50_ms', 0):.1f} p99 {lat.get('p99_ms', 0):.1f} "
            f"max {lat.get('max_ms', 0):.1f} ms",
            flush=True,
        )
    return {"streams": streams, "seconds": seconds, "servers": results}


async def _fanout_once(addr: str, srv: procs.Server, watchers: int) -> dict[str, Any]:
    ch = grpc.aio.insecure_channel(addr)
    watch = ch.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    calls = [watch(health_pb2.HealthCheckRequest(service="gpu")) for _ in range(watchers)]
    first = await asyncio.wait_for(asyncio.gather(*(c.read() for c in calls)), 30)
    assert all(r.status == SERVING for r in first), "not SERVING at start"
    for c in calls[: watchers // 2]:
        c.cancel()
    survivors = calls[watchers // 2 :]
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    await loop.run_in_executor(None, srv.command, "set gpu NOT_SERVING")

    async def until_not_serving(c: Any) -> float | None:
        try:
            while True:
                r = await c.read()
                if r is grpc.aio.EOF:
                    return None
                if r.status == NOT_SERVING:
                    return (time.perf_counter() - t0) * 1000
        except grpc.RpcError:
            return None

    got: list[float | None] = []
    try:
        got = await asyncio.wait_for(asyncio.gather(*(until_not_serving(c) for c in survivors)), 10)
    except TimeoutError:
        got = []
    for c in survivors:
        c.cancel()
    await ch.close(grace=None)
    received = [g for g in got if g is not None]
    # a probe right after: does Check still answer?
    ms, why = _probe(addr)
    return {
        "survivors": len(survivors),
        "received": len(received),
        "timed_out": not got,
        "latency": percentiles(received),
        "probe_after_ms": ms,
        "probe_after_error": why,
    }


def _probe(addr: str) -> tuple[float, str]:
    from bench.loadgen import probe_once

    return probe_once(addr, "liveness", 1.0)


def watch_fanout(*, watchers: int = 200) -> dict[str, Any]:
    srv_cpus, _ = procs.cpus()
    results: dict[str, Any] = {}
    for mode in ("ours", "sync", "asyncio"):
        srv = procs.start_stock(mode, srv_cpus)
        name = "ours" if mode == "ours" else f"stock-{mode}"
        try:
            res = asyncio.run(_fanout_once(srv.addr, srv, watchers))
        finally:
            srv.stop()
        results[name] = res
        lat = res["latency"]
        print(
            f"  {name:14s} {res['received']}/{res['survivors']} survivors got NOT_SERVING"
            f"{' (timed out after 10 s)' if res['timed_out'] else ''}: "
            f"p50 {lat.get('p50_ms', 0):.1f} p99 {lat.get('p99_ms', 0):.1f} "
            f"max {lat.get('max_ms', 0):.1f} ms; probe after: {res['probe_after_ms']:.1f} ms "
            f"{res['probe_after_error'] or 'ok'}",
            flush=True,
        )
    return {"watchers": watchers, "servers": results}


def main() -> None:
    from bench.loadgen import choose

    gen = choose()
    print(f"generator: {gen.why}")
    if "--flood" in sys.argv:
        only = tuple(a for a in sys.argv[1:] if not a.startswith("--")) or None
        probe_under_watch_flood(gen, quick=True, servers=only)
        return
    watch_fanout()
    probe_under_watchers(gen, quick=True)


if __name__ == "__main__":
    main()
