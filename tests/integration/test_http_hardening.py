"""The HTTP port under hostile clients, against a real `serve --simulate` process: a connection
cap (slow connections cost no thread, the oldest is evicted so a fresh /readyz is answered), a
header timeout for idle and trickling connections, and a descriptor reserve that keeps the gRPC
port answering whatever happens on the HTTP port."""

from __future__ import annotations

import resource
import select
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from sidecar.testing.hostile import Prober, metric

from .conftest import SidecarProcess, check, wait_until

SLOW_HEADER = b"GET /readyz HTTP/1.1\r\nHost: x\r\n"  # never finished


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:  # refused, reset or timed out: no answer
        return 0


def closed_count(port: int, reason: str) -> float:
    return metric(port, f'trt_health_http_connections_closed_total{{reason="{reason}"}}')


def start(tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess], http_cfg: str) -> SidecarProcess:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"http:\n{http_cfg}")
    return sidecar_proc("--simulate", "--config", str(cfg))


def connect(port: int, payload: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if payload:
        s.sendall(payload)
    return s


def closed_by_peer(s: socket.socket, wait: float) -> bool:
    """True once the server has closed ``s`` (EOF or reset)."""
    readable, _, _ = select.select([s], [], [], wait)
    if not readable:
        return False
    try:
        return s.recv(4096) == b""
    except OSError:
        return True


def test_connection_cap_bounds_threads_and_readyz_still_answers(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    sp = start(tmp_path, sidecar_proc, "  max_connections: 8\n  request_timeout: 60s\n")
    base_threads = threads_of(sp.proc.pid)
    socks = [connect(sp.http_port, SLOW_HEADER) for _ in range(200)]
    try:
        # witness: the server saw them all and evicted all but the newest few
        wait_until(lambda: closed_count(sp.http_port, "evicted") >= 192, timeout=20, interval=0.05)
        # the cap holds the connections still sending a header; the gauge also counts the
        # connections being answered, and this /metrics request is one of them
        assert metric(sp.http_port, "trt_health_http_connections") <= 8 + 1
        # no thread per connection: 200 slow clients leave the thread count where it was
        # (the answer pools start at most 4 threads)
        assert threads_of(sp.proc.pid) <= base_threads + 4
        # a fresh probe is answered while slow connections keep arriving
        socks += [connect(sp.http_port, SLOW_HEADER) for _ in range(20)]
        assert http_status(sp.http_port, "/readyz") in (200, 503)
        assert http_status(sp.http_port, "/livez") == 200
        assert check(sp.addr, "liveness") is not None
    finally:
        for s in socks:
            s.close()


def test_idle_and_trickling_connections_closed_after_request_timeout(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    sp = start(tmp_path, sidecar_proc, "  request_timeout: 300ms\n")
    idle = connect(sp.http_port, b"")
    trickle = connect(sp.http_port, b"G")
    try:
        assert wait_until(lambda: closed_by_peer(idle, 0.05), timeout=10)
        # a client sending one byte at a time is closed too (a whole-header deadline, not a
        # per-read timeout)
        sent = 0

        def trickled_out() -> bool:
            nonlocal sent
            try:
                trickle.send(b"E")
                sent += 1
            except OSError:
                return True
            return closed_by_peer(trickle, 0.05)

        assert wait_until(trickled_out, timeout=10)
        assert sent >= 1
        assert closed_count(sp.http_port, "timeout") >= 2
        assert http_status(sp.http_port, "/livez") == 200  # a prompt client is still answered
    finally:
        idle.close()
        trickle.close()


def test_grpc_answers_while_http_connections_exhaust_descriptors(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    # a cap above what the descriptor limit allows: the fd reserve is what must hold
    sp = start(tmp_path, sidecar_proc, "  max_connections: 5000\n  request_timeout: 60s\n")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.prlimit(sp.proc.pid, resource.RLIMIT_NOFILE, (256, hard))
    socks: list[socket.socket] = []
    with Prober(sp.addr) as prober:
        try:
            for _ in range(400):
                socks.append(connect(sp.http_port, SLOW_HEADER))
            # witness: the server closed the connections past its descriptor reserve
            wait_until(lambda: closed_by_peer(socks[-1], 0.05), timeout=20)
            probed = len(prober.results)
            wait_until(lambda: len(prober.results) >= probed + 20, timeout=20, interval=0.05)
            assert check(sp.addr, "liveness") is not None  # a fresh gRPC connection too
        finally:
            for s in socks:
                s.close()
    failures = [why for _, why in prober.results if why]
    assert not failures, failures[:5]
    assert sp.proc.poll() is None
    # once the flood is gone HTTP answers again, and says why it refused
    wait_until(lambda: http_status(sp.http_port, "/livez") == 200, timeout=20, interval=0.05)
    assert closed_count(sp.http_port, "fd_reserve") >= 1
