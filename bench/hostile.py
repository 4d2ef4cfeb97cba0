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
import contextlib
import json
import os
import shutil
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
        rss_start = procs.rss_mb(srv.pid)
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
            # the streams are freed, and (ours) the heap trimmed within a reaper tick or two:
            # wait up to 15 s for RSS to come back within 50 MB of the start
            settle = time.monotonic() + 15
            while time.monotonic() < settle and procs.rss_mb(srv.pid) > rss_start + 50:
                time.sleep(0.5)
            res["server_rss_start_mb"] = rss_start
            res["server_rss_after_mb"] = procs.rss_mb(srv.pid)
        finally:
            srv.stop()
        results[name] = res
        lat = res.get("latency", {})
        failed = res.get("probes", 0) - int(lat.get("n", 0))
        print(
            f"  {name:14s} {streams} Watch at once on 1 connection: opened "
            f"{watch.opened.get('opened')}, refused {watch.opened.get('refused')}, failed "
            f"{watch.opened.get('failed')} ({open_s:.1f} s): probes {res.get('probes')}, "
            f"failed {failed} {(res.get('failed_examples') or [])[:3]}, "
            f"p50 {lat.get('p50_ms', 0):.1f} p99 {lat.get('p99_ms', 0):.1f} "
            f"max {lat.get('max_ms', 0):.1f} ms",
            flush=True,
        )
    return {"streams": streams, "seconds": seconds, "servers": results}


# ------------------------------------------------------------------------------ HTTP port attacks

HTTP_ATTACKS = ("slowloris", "connect_churn", "metrics_flood")


async def _attack(kind: str, port: int, seconds: float, n: int) -> dict[str, Any]:
    """One attack on the HTTP port from this (attacker) process, bounded in count and time."""
    end = time.monotonic() + seconds
    stats = {"opened": 0, "connect_errors": 0, "answers": 0, "closed_by_server": 0}
    held: list[asyncio.StreamWriter] = []

    async def watch_close(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            await reader.read()
            stats["closed_by_server"] += 1

    readers: list[asyncio.Task[None]] = []
    if kind == "slowloris":  # n connections, each sends a header that never ends
        while stats["opened"] < n and time.monotonic() < end:
            try:
                r, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                stats["connect_errors"] += 1
                await asyncio.sleep(0.01)
                continue
            w.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
            held.append(w)
            readers.append(asyncio.create_task(watch_close(r)))
            stats["opened"] += 1
        await asyncio.sleep(max(0.0, end - time.monotonic()))
    elif kind == "connect_churn":  # connect, send nothing, close: n times at most
        while stats["opened"] < n and time.monotonic() < end:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                stats["connect_errors"] += 1
                continue
            stats["opened"] += 1
            w.close()
    elif kind == "metrics_flood":  # n concurrent clients, each GET /metrics in a loop

        async def client() -> None:
            while time.monotonic() < end:
                try:
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    stats["connect_errors"] += 1
                    await asyncio.sleep(0.01)
                    continue
                stats["opened"] += 1
                w.write(b"GET /metrics HTTP/1.0\r\n\r\n")
                with contextlib.suppress(Exception):
                    if (await r.read()).startswith(b"HTTP/1.0 "):
                        stats["answers"] += 1
                w.close()

        await asyncio.gather(*(client() for _ in range(n)))
    for w in held:
        w.close()
    for t in readers:
        t.cancel()
    return stats


def _http_probe_once(port: int, path: str, budget: float) -> tuple[float, str]:
    import urllib.error
    import urllib.request

    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=budget) as resp:
            why = "" if resp.status in (200, 503) else str(resp.status)
    except urllib.error.HTTPError as exc:
        why = "" if exc.code == 503 else str(exc.code)  # answered (not ready is an answer)
    except OSError as exc:
        why = type(exc).__name__
    return (time.perf_counter() - t0) * 1000, why


def _http_prober(port: int, seconds: float, out: list[tuple[float, str]]) -> None:
    """A kubelet-style HTTP probe of /readyz: fresh connection, 1 s budget, ten a second."""
    start = time.monotonic()
    for i in range(int(seconds * 10)):
        delay = start + i / 10 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out.append(_http_probe_once(port, "/readyz", 1.0))


def http_attacks(gen: Generator, *, quick: bool, fd_limit: int = 1024) -> dict[str, Any]:
    """Issue #10 item 10: slowloris, connection churn and a /metrics flood on the HTTP port of a
    sidecar whose descriptor limit is ``fd_limit``, with kubelet-style gRPC probes and HTTP
    /readyz probes throughout. Reported per attack: probe failures and p99, peak threads and
    RSS of the server, and its RSS after the attack (target: within 50 MB of the start)."""
    import resource

    srv_cpus, gen_cpus = procs.cpus()
    seconds = 6 if quick else 15
    sizes = {"slowloris": 4000 if quick else 10000, "connect_churn": 50000, "metrics_flood": 2000}
    srv = procs.start_sidecar(srv_cpus)
    http_port = int(srv.extra["http_port"])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(srv.pid, resource.RLIMIT_NOFILE, (min(fd_limit, hard), hard))
    results: dict[str, Any] = {"fd_limit": fd_limit, "seconds": seconds, "attacks": {}}
    try:
        procs.wait_for(lambda: procs.health_check(srv.addr, "liveness") is not None, 10)
        rss_start = procs.rss_mb(srv.pid)
        results["rss_start_mb"] = rss_start
        results["threads_start"] = procs.threads(srv.pid)
        for kind in HTTP_ATTACKS:
            box: dict[str, Any] = {}
            http_probes: list[tuple[float, str]] = []
            grpc_t = threading.Thread(
                target=_probe_into, args=(box, gen, srv.addr, gen_cpus, seconds), daemon=True
            )
            http_t = threading.Thread(
                target=_http_prober, args=(http_port, seconds, http_probes), daemon=True
            )
            pin_fn = pin(gen_cpus)

            def pre(pin_fn: Any = pin_fn) -> None:
                if pin_fn is not None:
                    pin_fn()
                os.nice(10)

            attacker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.hostile",
                    "--attack",
                    kind,
                    str(http_port),
                    str(seconds),
                    str(sizes[kind]),
                ],
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=pre,
                cwd=procs.REPO,
            )
            grpc_t.start()
            http_t.start()
            peak_threads, peak_rss = 0, 0.0
            while attacker.poll() is None:
                peak_threads = max(peak_threads, procs.threads(srv.pid))
                peak_rss = max(peak_rss, procs.rss_mb(srv.pid))
                time.sleep(0.2)
            out, _ = attacker.communicate(timeout=30)
            grpc_t.join(seconds + 60)
            http_t.join(seconds + 60)
            # after the attack: threads and RSS settle (bounded wait)
            settle_end = time.monotonic() + 10
            while time.monotonic() < settle_end and procs.threads(srv.pid) > results["threads_start"] + 4:
                time.sleep(0.2)
            lat = box.get("latency", {})
            http_ok = [ms for ms, why in http_probes if not why]
            res = {
                "attacker": json.loads(out.strip().splitlines()[-1]) if out.strip() else {},
                "grpc_probes": box.get("probes", 0),
                "grpc_failed": box.get("probes", 0) - int(lat.get("n", 0)),
                "grpc_failed_examples": box.get("failed_examples") or [],
                "grpc_latency": lat,
                "http_probes": len(http_probes),
                "http_failed": len(http_probes) - len(http_ok),
                "http_failed_examples": [why for _, why in http_probes if why][:3],
                "http_latency": percentiles(http_ok),
                "peak_threads": peak_threads,
                "peak_rss_mb": peak_rss,
                "threads_after": procs.threads(srv.pid),
                "rss_after_mb": procs.rss_mb(srv.pid),
            }
            results["attacks"][kind] = res
            hl = res["http_latency"]
            print(
                f"  {kind:14s} {res['attacker']}: gRPC probes {res['grpc_probes']}, failed "
                f"{res['grpc_failed']} {res['grpc_failed_examples'][:2]}, p99 {lat.get('p99_ms', 0):.1f} ms; "
                f"HTTP /readyz {res['http_probes']}, failed {res['http_failed']} "
                f"{res['http_failed_examples']}, p99 {hl.get('p99_ms', 0):.1f} ms; threads "
                f"{results['threads_start']} -> peak {peak_threads} -> {res['threads_after']}; RSS "
                f"{rss_start:.0f} -> peak {peak_rss:.0f} -> {res['rss_after_mb']:.0f} MB",
                flush=True,
            )
    finally:
        srv.stop()
    return results


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


_BOMB_LEVELS = "".join(
    f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)
FILE_ATTACKS: dict[str, str] = {
    # 421 bytes of nested aliases under canary: (it froze the process ~11 s per run, RSS 2.1 GB)
    "alias_bomb": 'canary:\n  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + _BOMB_LEVELS
    + "  mode: *g\n",
    "deep_nesting": "gpus: " + "[" * 20000 + "]" * 20000 + "\n",
    "huge_50mb": "gpus: [{}]\n" + "#" * (50 << 20) + "\n",
}


def file_attacks(gen: Generator, *, quick: bool) -> dict[str, Any]:
    """Issue #10 items 2, 11, 12: hostile scenario files (an alias bomb, 20,000 levels of
    nesting, 50 MB) rewritten again and again while kubelet-style probes of liveness run; the
    server's peak RSS and its RSS after each (target: within 50 MB of the start)."""
    srv_cpus, gen_cpus = procs.cpus()
    seconds = 6 if quick else 12
    rewrites = 4 if quick else 12
    tmp = Path(tempfile.mkdtemp(prefix="bench-files-"))
    scenario = tmp / "scenario.yaml"
    healthy = "gpus: [{}]\ncanary: {mode: ok}\n"
    scenario.write_text(healthy)

    def write(text: str) -> None:
        new = tmp / ".scenario.new"
        new.write_text(text)
        os.replace(new, scenario)

    srv = procs.start_sidecar(srv_cpus, "--scenario", str(scenario))
    results: dict[str, Any] = {"seconds": seconds, "rewrites": rewrites, "attacks": {}}
    try:
        procs.wait_for(lambda: procs.health_check(srv.addr, "readiness") == 1, 30)
        rss_start = procs.rss_mb(srv.pid)
        results["rss_start_mb"] = rss_start
        for kind, text in FILE_ATTACKS.items():
            box: dict[str, Any] = {}
            t = threading.Thread(
                target=_probe_into, args=(box, gen, srv.addr, gen_cpus, seconds), daemon=True
            )
            t.start()
            peak = 0.0
            for _ in range(rewrites):
                write(text + f"# {time.monotonic()}\n")  # a new document every time
                time.sleep(seconds / rewrites / 2)
                peak = max(peak, procs.rss_mb(srv.pid))
                write(healthy)
                time.sleep(seconds / rewrites / 2)
            t.join(seconds + 60)
            lat = box.get("latency", {})
            res = {
                "probes": box.get("probes", 0),
                "failed": box.get("probes", 0) - int(lat.get("n", 0)),
                "latency": lat,
                "peak_rss_mb": peak,
                "rss_after_mb": procs.rss_mb(srv.pid),
                "ready_after": procs.health_check(srv.addr, "readiness") == 1,
            }
            results["attacks"][kind] = res
            print(
                f"  {kind:13s} liveness probes {res['probes']}, failed {res['failed']}, p99 "
                f"{lat.get('p99_ms', 0):.1f} ms; RSS {rss_start:.0f} -> peak {peak:.0f} -> "
                f"{res['rss_after_mb']:.0f} MB; ready after: {res['ready_after']}",
                flush=True,
            )
    finally:
        srv.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


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

    if len(sys.argv) == 6 and sys.argv[1] == "--attack":  # the attacker process
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        kind, port, seconds, n = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(asyncio.run(_attack(kind, port, seconds, n))), flush=True)
        return
    gen = choose()
    print(f"generator: {gen.why}")
    if "--http" in sys.argv:
        http_attacks(gen, quick="--full" not in sys.argv)
        return
    if "--flood" in sys.argv:
        only = tuple(a for a in sys.argv[1:] if not a.startswith("--")) or None
        probe_under_watch_flood(gen, quick=True, servers=only)
        return
    watch_fanout()
    probe_under_watchers(gen, quick=True)


if __name__ == "__main__":
    main()
