"""The load generator: a small Go client (preferred) or grpcio processes (fallback).

Both speak the same command line and print the same JSON, so the benchmarks do not care which
one runs::

    closed -addr A -conns 4 -inflight 64 -warmup 1s -duration 5s -service S   max throughput
    open   -addr A -conns 4 -rate 1000 -warmup 1s -duration 10s -service S    latency, open loop
    watch  -addr A -conns 4 -streams 100 -ramp 0 -hold 60s -service S          Watch streams
    probe  -addr A -rate 10 -duration 10s -timeout 1s -service S               kubelet-style

Why Go first: one Go process on one core drives ~25,000+ Check/s, several times what any Python
server in the comparison answers, so the generator is never the bottleneck. It is built offline
from Debian's ``golang-go`` and ``golang-google-grpc-dev`` (GOPATH mode, GOPATH=/usr/share/gocode).
Without them the fallback is ``python -m bench.loadgen MODE ...``: ``-procs`` grpc.aio client
processes; on a single client core it can saturate before a fast server does (the report says
which generator ran).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GO_SOURCE = Path(__file__).resolve().parent / "go" / "healthbench.go"
GOPATH = "/usr/share/gocode"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trt-health-sidecar-bench"


def build_go(verbose: bool = False) -> tuple[Path | None, str]:
    """Build the Go generator (cached by source hash). Returns (binary or None, why)."""
    go = shutil.which("go")
    if go is None:
        return None, "go not installed (apt-get install golang-go golang-google-grpc-dev)"
    if not (Path(GOPATH) / "src/google.golang.org/grpc/health").is_dir():
        return None, f"grpc-go not under {GOPATH} (apt-get install golang-google-grpc-dev)"
    digest = hashlib.sha256(GO_SOURCE.read_bytes()).hexdigest()[:16]
    out = _cache_dir() / f"healthbench-{digest}"
    if out.exists():
        return out, "cached build"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="", GOCACHE=str(out.parent / "gocache"))
    tmp = out.with_suffix(".tmp")
    proc = subprocess.run(
        [go, "build", "-o", str(tmp), str(GO_SOURCE)], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        return None, f"go build failed: {proc.stderr.strip()[-500:]}"
    tmp.rename(out)
    if verbose:
        print(f"built {out}", file=sys.stderr)
    return out, "built"


def go_version() -> str:
    go = shutil.which("go")
    if go is None:
        return ""
    try:
        v = subprocess.run([go, "version"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return ""
    grpc_ver = ""
    try:
        text = (Path(GOPATH) / "src/google.golang.org/grpc/version.go").read_text()
        grpc_ver = text.split('Version = "', 1)[1].split('"', 1)[0]
    except (OSError, IndexError):
        pass
    return v.strip().replace("go version ", "") + (f", grpc-go {grpc_ver}" if grpc_ver else "")


def pin(cpus: set[int] | None) -> Any:
    """A preexec_fn that pins the child to ``cpus`` (None: no pinning)."""
    if not cpus:
        return None

    def fn() -> None:
        os.sched_setaffinity(0, cpus)

    return fn


@dataclass
class Generator:
    """How to run a generator mode: ``argv_prefix + [mode, flags...]``."""

    name: str
    argv_prefix: list[str]
    why: str

    def argv(self, mode: str, **flags: Any) -> list[str]:
        out = [*self.argv_prefix, mode]
        for key, value in flags.items():
            out.append(f"-{key}={_fmt(value)}")
        return out

    def run(
        self, mode: str, cpus: set[int] | None = None, run_timeout: float = 600, **flags: Any
    ) -> dict[str, Any]:
        """Run a mode to completion; returns its last JSON line."""
        proc = subprocess.run(
            self.argv(mode, **flags),
            capture_output=True,
            text=True,
            timeout=run_timeout,
            preexec_fn=pin(cpus),
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"{self.name} {mode} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def start(self, mode: str, cpus: set[int] | None = None, **flags: Any) -> WatchHandle:
        """Start a long-running mode (watch); returns once its first JSON line arrived."""
        proc = subprocess.Popen(
            self.argv(mode, **flags),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=pin(cpus),
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"{self.name} {mode} exited: {err[-800:]}")
        return WatchHandle(proc, json.loads(line))


@dataclass
class WatchHandle:
    proc: subprocess.Popen[str]
    opened: dict[str, Any]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _fmt(value: Any) -> str:
    return str(value)


def choose(prefer_go: bool = True) -> Generator:
    """The Go generator when it builds, else the grpcio fallback."""
    if prefer_go:
        binary, why = build_go()
        if binary is not None:
            return Generator("go", [str(binary)], f"Go client ({go_version()}); {why}")
        fallback_why = why
    else:
        fallback_why = "Go not requested"
    return Generator(
        "grpcio",
        [sys.executable, "-m", "bench.loadgen"],
        f"grpcio (grpc.aio) client processes; Go unavailable: {fallback_why}",
    )


def go_server_argv() -> list[str] | None:
    binary, _ = build_go()
    return None if binary is None else [str(binary), "server", "-addr=127.0.0.1:0"]


# --------------------------------------------------------------------- grpcio fallback client


def percentiles(lat: Sequence[float]) -> dict[str, float]:
    out: dict[str, float] = {"n": float(len(lat))}
    if not lat:
        return out
    s = sorted(lat)

    def q(p: float) -> float:
        return s[int(p * (len(s) - 1))]

    out.update(p50_ms=q(0.5), p90_ms=q(0.9), p99_ms=q(0.99), p999_ms=q(0.999), max_ms=s[-1])
    return out


def _duration(text: str) -> float:
    text = text.strip()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * mult
    return float(text)


def _request(service: str) -> bytes:
    from grpc_health.v1 import health_pb2

    return bytes(health_pb2.HealthCheckRequest(service=service).SerializeToString())


async def _closed_proc(
    addr: str, service: str, conns: int, inflight: int, warmup: float, duration: float
) -> dict[str, Any]:
    import grpc

    chans = [grpc.aio.insecure_channel(addr) for _ in range(conns)]
    calls = [c.unary_unary("/grpc.health.v1.Health/Check") for c in chans]
    for c in chans:
        await c.channel_ready()
    req = _request(service)
    state = {"measuring": False, "stop": False, "ok": 0, "err": 0}
    lat: list[float] = []

    async def worker(i: int) -> None:
        call = calls[i % len(calls)]
        while not state["stop"]:
            t0 = time.perf_counter()
            try:
                await call(req, timeout=5)
                okay = True
            except grpc.RpcError:
                okay = False
            if state["measuring"]:
                if okay:
                    state["ok"] += 1
                    if len(lat) < 200_000:
                        lat.append((time.perf_counter() - t0) * 1000)
                else:
                    state["err"] += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(inflight)]
    await asyncio.sleep(warmup)
    state["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    state["stop"] = True
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in chans:
        await c.close()
    return {"ok": state["ok"], "errors": state["err"], "seconds": elapsed, "lat": lat}


def _closed_entry(args: tuple[Any, ...]) -> dict[str, Any]:
    return asyncio.run(_closed_proc(*args))


async def _open_proc(
    addr: str, service: str, conns: int, rate: float, warmup: float, duration: float
) -> dict[str, Any]:
    import grpc

    chans = [grpc.aio.insecure_channel(addr) for _ in range(conns)]
    calls = [c.unary_unary("/grpc.health.v1.Health/Check") for c in chans]
    for c in chans:
        await c.channel_ready()
    req = _request(service)
    lat: list[float] = []
    errs = 0
    late = 0
    interval = 1.0 / rate
    total = int((warmup + duration) * rate)
    n_warm = int(warmup * rate)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.01
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int, intended: float) -> None:
        nonlocal errs
        try:
            await calls[i % len(calls)](req, timeout=5)
            okay = True
        except grpc.RpcError:
            okay = False
        if i >= n_warm:
            if okay:
                lat.append((loop.time() - intended) * 1000)
            else:
                errs += 1

    for i in range(total):
        intended = start + i * interval
        delay = intended - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        elif -delay > 0.1:
            late += 1
        t = asyncio.create_task(one(i, intended))
        pending.add(t)
        t.add_done_callback(pending.discard)
    await asyncio.gather(*list(pending), return_exceptions=True)
    for c in chans:
        await c.close()
    return {"offered_rps": rate, "errors": errs, "generator_late": late, "latency": percentiles(lat)}


async def _watch_proc(addr: str, service: str, conns: int, streams: int, hold: float, ramp: int = 0) -> None:
    import grpc

    chans = [grpc.aio.insecure_channel(addr) for _ in range(conns)]
    watch = [c.unary_stream("/grpc.health.v1.Health/Watch") for c in chans]
    req = _request(service)
    counts = {"opened": 0, "refused": 0, "failed": 0, "updates": 0}
    firsts: asyncio.Queue[None] = asyncio.Queue()
    sem = asyncio.Semaphore(ramp if ramp > 0 else streams)

    async def one(i: int) -> None:
        await sem.acquire()
        call = watch[i % len(watch)](req)
        first = True
        try:
            async for _ in call:
                if first:
                    first = False
                    counts["opened"] += 1
                    sem.release()
                    firsts.put_nowait(None)
                else:
                    counts["updates"] += 1
        except grpc.RpcError as exc:
            if first:
                code = exc.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    counts["refused"] += 1
                elif code != grpc.StatusCode.CANCELLED:
                    counts["failed"] += 1
        except asyncio.CancelledError:
            call.cancel()
            raise
        if first:
            sem.release()
            firsts.put_nowait(None)

    tasks = [asyncio.create_task(one(i)) for i in range(streams)]
    deadline = time.monotonic() + 60
    got = 0
    while got < streams and time.monotonic() < deadline:
        try:
            await asyncio.wait_for(firsts.get(), timeout=max(0.01, deadline - time.monotonic()))
            got += 1
        except TimeoutError:
            break
    print(
        json.dumps(
            {
                "event": "open",
                "opened": counts["opened"],
                "refused": counts["refused"],
                "failed": counts["failed"],
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    import signal

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=hold)
    except TimeoutError:
        pass
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in chans:
        await c.close(grace=None)
    print(json.dumps({"event": "closed", "updates": counts["updates"]}), flush=True)


def probe_once(addr: str, service: str, timeout: float) -> tuple[float, str]:
    """One kubelet-style probe: fresh channel, dial + Check within ``timeout``.

    Returns (milliseconds, "" on SERVING else why)."""
    import grpc
    from grpc_health.v1 import health_pb2

    t0 = time.perf_counter()
    deadline = t0 + timeout
    try:
        with grpc.insecure_channel(addr, options=[("grpc.enable_http_proxy", 0)]) as ch:
            check = ch.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            # wait_for_ready: the dial is part of the budget, like the kubelet's probe
            resp = check(
                health_pb2.HealthCheckRequest(service=service),
                timeout=max(0.001, deadline - time.perf_counter()),
                wait_for_ready=True,
            )
        why = "" if resp.status == health_pb2.HealthCheckResponse.SERVING else str(resp.status)
    except grpc.RpcError as exc:
        why = str(exc.code())
    return (time.perf_counter() - t0) * 1000, why


def _probe_mode(addr: str, service: str, rate: float, duration: float, timeout: float) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    total = int(duration * rate)
    start = time.monotonic()
    futs = []
    with ThreadPoolExecutor(max_workers=max(4, math.ceil(rate * timeout) + 2)) as pool:
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futs.append(pool.submit(probe_once, addr, service, timeout))
    results = [f.result() for f in futs]
    lat = [ms for ms, why in results if not why]
    fails = [why for _, why in results if why][:5]
    return {"probes": total, "failed_examples": fails, "latency": percentiles(lat)}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(__doc__, file=sys.stderr)
        return 1
    mode, rest = args[0], args[1:]
    flags: dict[str, str] = {}
    for a in rest:
        key, _, value = a.lstrip("-").partition("=")
        flags[key] = value
    addr = flags.get("addr", "127.0.0.1:0")
    service = flags.get("service", "liveness")
    conns = int(flags.get("conns", "4"))
    warmup = _duration(flags.get("warmup", "1s"))
    duration = _duration(flags.get("duration", "5s"))
    if mode == "closed":
        procs = int(flags.get("procs", "2"))
        inflight = int(flags.get("inflight", "64"))
        per = max(1, inflight // procs)
        job = (addr, service, max(1, conns // procs), per, warmup, duration)
        print(json.dumps({"event": "measuring"}), flush=True)
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            parts = pool.map(_closed_entry, [job] * procs)
        ok = sum(p["ok"] for p in parts)
        secs = max(p["seconds"] for p in parts)
        lat = [x for p in parts for x in p["lat"]]
        print(
            json.dumps(
                {
                    "ok": ok,
                    "errors": sum(p["errors"] for p in parts),
                    "seconds": secs,
                    "rps": ok / secs,
                    "latency": percentiles(lat),
                }
            )
        )
    elif mode == "open":
        rate = float(flags.get("rate", "1000"))
        print(json.dumps({"event": "started"}), flush=True)
        print(json.dumps(asyncio.run(_open_proc(addr, service, conns, rate, warmup, duration))))
    elif mode == "watch":
        streams = int(flags.get("streams", "100"))
        asyncio.run(
            _watch_proc(
                addr,
                service,
                conns,
                streams,
                _duration(flags.get("hold", "60s")),
                int(flags.get("ramp", "0")),
            )
        )
    elif mode == "probe":
        rate = float(flags.get("rate", "10"))
        print(json.dumps(_probe_mode(addr, service, rate, duration, _duration(flags.get("timeout", "1s")))))
    else:
        print(f"unknown mode {mode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
