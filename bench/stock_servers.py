"""Health servers to benchmark against, each in its own process.

``python -m bench.stock_servers MODE [--port 0] [--threads 16]`` prints one JSON line
``{"port": ..., "pid": ...}`` on stdout once it serves, then reads commands on stdin, one a line:
``set SERVICE SERVING|NOT_SERVING`` (answered ``ok``); end of input or SIGTERM stops it.

Modes:

- ``sync``: grpcio's stock ``grpc_health.v1.health.HealthServicer`` on ``grpc.server`` with a
  ``ThreadPoolExecutor`` of ``--threads`` workers (the usual way it is deployed);
- ``asyncio``: the stock ``grpc_health.v1.health.aio.HealthServicer`` on ``grpc.aio.server``;
- ``ours``: our :class:`sidecar.app.SidecarApp` with no components (the serving core alone),
  statuses driven by ``set`` commands through the real policy (a FATAL result gating the named
  service). Used where a benchmark must change a status on demand (Watch fan-out).

Every server starts with ``""``, ``liveness``, ``readiness``, ``startup`` and ``gpu`` SERVING.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

SERVICES = ("", "liveness", "readiness", "startup", "gpu")
STATUS = {
    "SERVING": health_pb2.HealthCheckResponse.SERVING,
    "NOT_SERVING": health_pb2.HealthCheckResponse.NOT_SERVING,
}


def _announce(port: int) -> None:
    import os

    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)


def _parse_set(line: str) -> tuple[str, int] | None:
    parts = line.split()
    if len(parts) == 3 and parts[0] == "set" and parts[2] in STATUS:
        return ("" if parts[1] == '""' else parts[1]), STATUS[parts[2]]
    return None


def run_sync(host: str, port: int, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    servicer = health.HealthServicer()
    for s in SERVICES:
        servicer.set(s, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    _announce(bound)
    try:
        for line in sys.stdin:
            cmd = _parse_set(line)
            if cmd is not None:
                servicer.set(*cmd)
                print("ok", flush=True)
    except (ValueError, OSError):
        pass
    server.stop(0)


async def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    q: asyncio.Queue[str | None] = asyncio.Queue()

    def reader() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(q.put_nowait, line)
        except (ValueError, OSError):
            pass
        loop.call_soon_threadsafe(q.put_nowait, None)

    threading.Thread(target=reader, daemon=True).start()
    return q


async def _serve_commands(port: int, apply: Callable[[str, int], Awaitable[None]]) -> None:
    """Announce ``port``, then apply ``set`` commands from stdin until EOF or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    q = await _stdin_lines(loop)
    _announce(port)
    while not stop.is_set():
        get = asyncio.ensure_future(q.get())
        waiter = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({get, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            break
        waiter.cancel()
        line = get.result()
        if line is None:
            break
        cmd = _parse_set(line)
        if cmd is not None:
            await apply(*cmd)
            print("ok", flush=True)


async def run_asyncio(host: str, port: int) -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    for s in SERVICES:
        await servicer.set(s, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await _serve_commands(bound, lambda service, status: servicer.set(service, status))
    await server.stop(0)


async def run_ours(host: str, port: int, max_watchers: int) -> None:
    from dataclasses import replace

    from sidecar.app import SidecarApp
    from sidecar.config import GrpcConfig, HttpConfig, SidecarConfig
    from sidecar.core.values import CheckResult, Severity

    config = SidecarConfig(
        grpc=GrpcConfig(host=host, port=port, max_watchers=max_watchers),
        http=replace(HttpConfig(), enabled=False),
        state_dir="/nonexistent-state",
        components={},
    )
    app = SidecarApp(config)
    await app.start()

    def result(service: str, serving: bool) -> CheckResult:
        gates = frozenset({service, "readiness"}) if service else frozenset({"readiness"})
        name = f"bench/{service or 'overall'}"
        if serving:
            return CheckResult.passed(name, gates=gates)
        return CheckResult.failed(
            name, "BenchFault", "set by the benchmark", severity=Severity.FATAL, gates=gates
        )

    app.policy.expect(f"bench/{s}" for s in ("gpu",))
    app.submit([result("gpu", True)])
    await asyncio.sleep(0)

    async def apply(service: str, status: int) -> None:
        app.submit([result(service, status == STATUS["SERVING"])])
        await asyncio.sleep(0)

    await _serve_commands(app.grpc_port, apply)
    await app.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.stock_servers")
    p.add_argument("mode", choices=("sync", "asyncio", "ours"))
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--threads", type=int, default=16, help="sync mode: thread-pool workers")
    p.add_argument("--max-watchers", type=int, default=10_000, help="ours: Watch stream cap")
    a = p.parse_args(argv)
    if a.mode == "sync":
        run_sync(a.host, a.port, a.threads)
    elif a.mode == "asyncio":
        asyncio.run(run_asyncio(a.host, a.port))
    else:
        import logging

        logging.basicConfig(level=logging.WARNING)
        asyncio.run(run_ours(a.host, a.port, a.max_watchers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
