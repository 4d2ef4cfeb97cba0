"""Process plumbing for the benchmarks: start servers pinned to a core, read /proc."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from bench.loadgen import pin
from sidecar import testing

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server cpus, load-generator cpus): one core each when there are two or more."""
    avail = sorted(os.sched_getaffinity(0))
    if len(avail) < 2:
        return None, None
    return {avail[0]}, set(avail[1:])


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(x) for x in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def health_check(addr: str, service: str, timeout: float = 1.0) -> int | None:
    """Status from a Check on a fresh channel; None when it fails."""
    try:
        with grpc.insecure_channel(addr, options=[("grpc.enable_http_proxy", 0)]) as ch:
            check = ch.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            return int(
                check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=False
                ).status
            )
    except grpc.RpcError:
        return None


def wait_for(cond: Callable[[], Any], timeout: float, interval: float = 0.005) -> Any:
    """:func:`sidecar.testing.wait_until`, raising TimeoutError (a benchmark records it)."""
    try:
        return testing.wait_until(cond, timeout=timeout, interval=interval)
    except AssertionError as exc:
        raise TimeoutError(str(exc)) from None


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    port: int
    pid: int
    started: float
    log_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    ports_file: Path | None = None  # a sidecar started on port 0 writes its ports there

    @property
    def addr(self) -> str:
        if self.port == 0 and self.ports_file is not None:
            ports = testing.read_ports_file(self.ports_file)
            if ports:
                self.port = ports["grpc_port"]
                self.extra["http_port"] = ports.get("http_port")
        return f"127.0.0.1:{self.port}"

    def command(self, line: str) -> None:
        """Send a stdin command to a bench.stock_servers server; waits for 'ok'."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_announcing(name: str, argv: list[str], cpus: set[int] | None) -> Server:
    """Start a server that prints {"port", "pid"} as its first stdout line."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        preexec_fn=pin(cpus),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{name} server did not start ({proc.wait()})")
    info = json.loads(line)
    srv = Server(name, proc, int(info["port"]), int(info.get("pid", proc.pid)), t0)
    wait_for(lambda: health_check(srv.addr, "liveness") is not None, 20)
    return srv


def start_stock(mode: str, cpus: set[int] | None, threads: int = 16) -> Server:
    return start_announcing(
        f"stock-{mode}",
        [sys.executable, "-m", "bench.stock_servers", mode, f"--threads={threads}"],
        cpus,
    )


def start_sidecar(
    cpus: set[int] | None,
    *args: str,
    state_dir: Path | None = None,
    wait: bool = True,
) -> Server:
    """``python -m sidecar serve --simulate`` on ports 0 (the kernel picks; its ports file says
    which); with ``wait``, waits until it serves. ``started`` is the monotonic time just before
    the exec. Without ``wait``, ``addr`` names port 0 until the ports file is there."""
    state = state_dir or Path(tempfile.mkdtemp(prefix="bench-state-"))
    log_fd, log_name = tempfile.mkstemp(prefix="bench-sidecar-", suffix=".log")
    os.close(log_fd)
    sp = testing.start_sidecar(
        "--simulate",
        "--state-dir",
        str(state),
        *args,
        log_path=Path(log_name),
        cwd=REPO,
        wait_started=wait,
        preexec_fn=pin(cpus),
    )
    srv = Server(
        "ours", sp.proc, sp.grpc_port, sp.proc.pid, sp.started, sp.log_path, ports_file=sp.ports_file
    )
    if wait:
        srv.extra["http_port"] = sp.http_port
    return srv


@contextlib.contextmanager
def running(srv: Server) -> Iterator[Server]:
    try:
        yield srv
    finally:
        srv.stop()
