"""Helpers for tests and benchmarks of the sidecar (shipped, so that tests, ``bench/`` and users'
own integration tests share one copy).

- :func:`wait_until` / :func:`await_until`: wait on an observable condition instead of sleeping
  a fixed time. The timeout only guards against a hang; it is never the thing tested.
- :func:`start_sidecar`: ``python -m sidecar serve`` on ports the kernel picks (port 0); the
  ports it got are read back from the ``--ports-file`` it writes once serving (or from its
  "sidecar started" log line), so two runs never collide on a port chosen before it was bound.
- :class:`SteppableClock`: a clock to inject into a component, moved forward by the test.
- :func:`closed_port`: a port nobody listens on, held so that nobody can take it.
- :class:`RecordingSink`: a thread-safe result sink keeping the latest result of every condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from sidecar.core.values import CheckResult

T = TypeVar("T")

STARTED_MSG = "sidecar started"
_TEXT_PORT = re.compile(r"\b(grpc_port|http_port)=(\d+)")


def wait_until(
    cond: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``cond`` until it returns a truthy value and return that value; AssertionError
    after ``timeout`` seconds (a hang guard, generous on purpose)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition {what or getattr(cond, '__name__', '')} not met in {timeout}s")
        time.sleep(interval)


async def await_until(
    cond: Callable[[], T | None],
    timeout: float = 10.0,  # noqa: ASYNC109 - a hang guard, reported as an AssertionError
    interval: float = 0.005,
    what: str = "",
) -> T:
    """:func:`wait_until` for coroutines: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition {what or getattr(cond, '__name__', '')} not met in {timeout}s")
        await asyncio.sleep(interval)


class SteppableClock:
    """A monotonic clock a test moves forward: real time plus the offset given to
    :meth:`advance` (components that also measure real intervals keep working)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@contextlib.contextmanager
def closed_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on which nothing listens, held for the duration: the socket is bound but never
    listens, so a connect is refused, and no other process can take the port meanwhile (a
    port merely *picked* free can be taken by a parallel run before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        yield int(s.getsockname()[1])


def pick_port(host: str = "127.0.0.1") -> int:
    """A port free *now*, for a third-party server that cannot bind port 0 and report it: a
    parallel run may take it before the server binds it, so the caller retries on a bind
    failure. Prefer port 0 (and ``serve --ports-file``) wherever the server supports it."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RecordingSink:
    """A thread-safe ResultSink that keeps the latest result of every condition, the whole
    history, and the names of the checks it was asked to trigger."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latest: dict[str, CheckResult] = {}
        self.history: list[CheckResult] = []
        self.triggers: list[str] = []

    def submit(self, results: Iterable[CheckResult]) -> None:
        with self._lock:
            for r in results:
                self.latest[r.name] = r
                self.history.append(r)

    def trigger(self, check_name: str) -> None:
        with self._lock:
            self.triggers.append(check_name)

    def count(self, pred: Callable[[CheckResult], bool]) -> int:
        """How many submitted results match ``pred``."""
        with self._lock:
            return sum(1 for r in self.history if pred(r))


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (scans /proc/*/stat; works without the children file)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            out.append(int(entry))
    return out


def log_records(path: Path) -> list[dict[str, Any]]:
    """The JSON records of a JSON-format log file (other lines are skipped)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                out.append(rec)
    return out


def started_ports(path: Path) -> dict[str, int] | None:
    """``{"grpc_port": N, "http_port": M}`` from the "sidecar started" line of a log file (JSON
    or text format); None until that line is there. ``http_port`` is absent when HTTP is off."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        if STARTED_MSG not in line:
            continue
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict) and rec.get("msg") == STARTED_MSG:
                return {k: int(rec[k]) for k in ("grpc_port", "http_port") if rec.get(k) is not None}
        ports = {k: int(v) for k, v in _TEXT_PORT.findall(line)}
        if "grpc_port" in ports:
            return ports
    return None


@dataclass
class SidecarProcess:
    """A ``python -m sidecar serve`` child process and its log file."""

    proc: subprocess.Popen[str]
    log_path: Path
    grpc_port: int = 0
    http_port: int = 0
    started: float = 0.0  # monotonic time just before the exec
    ports_file: Path | None = None  # what ``serve --ports-file`` writes; else the log line is read
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def stderr_path(self) -> Path:
        return self.log_path

    def log_records(self) -> list[dict[str, Any]]:
        return log_records(self.log_path)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_started(self, timeout: float = 30.0) -> SidecarProcess:
        """Wait for the "sidecar started" line and take the bound ports from it; raises when
        the process exits first."""

        def started() -> dict[str, int] | None:
            ports = read_ports_file(self.ports_file) if self.ports_file else started_ports(self.log_path)
            if ports is None and self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode}: {self.log_text()[-4000:]}")
            return ports

        ports = wait_until(started, timeout=timeout, what="sidecar started")
        self.grpc_port = ports["grpc_port"]
        self.http_port = ports.get("http_port", 0)
        return self

    def stop(self, sig: int = 15, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def read_ports_file(path: Path) -> dict[str, int] | None:
    """The ports a ``serve --ports-file`` wrote; None until it is there (it is written
    atomically, once serving)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return {k: int(v) for k, v in doc.items() if k.endswith("_port") and v is not None}


def sidecar_argv(*args: str, ports_file: Path | None = None, python: str = sys.executable) -> list[str]:
    """``python -m sidecar serve --grpc-port 0 --http-port 0 [--ports-file F] ARGS`` (later
    flags win, so ARGS may still name fixed ports)."""
    extra = ["--ports-file", str(ports_file)] if ports_file is not None else []
    return [python, "-m", "sidecar", "serve", "--grpc-port", "0", "--http-port", "0", *extra, *args]


def start_sidecar(
    *args: str,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    wait_started: bool = True,
    timeout: float = 30.0,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    preexec_fn: Callable[[], None] | None = None,
    python: str = sys.executable,
    argv: Sequence[str] | None = None,
) -> SidecarProcess:
    """Start the sidecar on kernel-chosen ports, its stderr (the log) in ``log_path``; with
    ``wait_started`` wait until it serves and take the ports it bound from its ports file
    (``LOG_PATH.ports.json``). ``argv`` replaces the whole command line (then the "sidecar
    started" log line, JSON or text at level info, names the ports)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    ports_file = None if argv is not None else log_path.with_name(log_path.name + ".ports.json")
    cmd = list(argv) if argv is not None else sidecar_argv(*args, ports_file=ports_file, python=python)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=err,
            text=True,
            env=full_env,
            cwd=cwd,
            preexec_fn=preexec_fn,
        )
    sp = SidecarProcess(proc, log_path, started=t0, ports_file=ports_file)
    if wait_started:
        sp.wait_started(timeout)
    return sp
