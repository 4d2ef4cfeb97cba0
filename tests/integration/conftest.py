"""Fixtures: a real sidecar app on ephemeral ports (in-process, on its own loop thread), and a
real sidecar process started from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar import testing, webhook
from sidecar.app import SidecarApp
from sidecar.config import GrpcConfig, HttpConfig, SidecarConfig
from sidecar.core.values import CheckResult
from sidecar.testing import SidecarProcess, wait_until
from sidecar.testing.certs import CertFiles, TestCA
from sidecar.testing.webhook import IMAGE, Client

__all__ = ["REPO", "AppThread", "SidecarProcess", "check", "core_config", "health_stub", "wait_until"]

REPO = Path(__file__).resolve().parents[2]


class AppThread:
    """A SidecarApp running on an event loop in a background thread."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.app = SidecarApp(config)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> AppThread:
        self._thread.start()
        self.call(self.app.start())
        return self

    @property
    def thread(self) -> threading.Thread:
        """The thread the loop runs on (its ``ident`` is set once started)."""
        return self._thread

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, *results: CheckResult) -> None:
        self.app.submit(results)
        # wait until the loop applied it
        self.call(asyncio.sleep(0))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.app.stop(), timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.app.grpc_port}"

    @property
    def http_base(self) -> str:
        assert self.app.http is not None
        return f"http://127.0.0.1:{self.app.http.port}"


def core_config(**kw: Any) -> SidecarConfig:
    grpc_kw = {k[5:]: v for k, v in kw.items() if k.startswith("grpc_")}
    rest = {k: v for k, v in kw.items() if not k.startswith("grpc_")}
    base = SidecarConfig(
        grpc=GrpcConfig(host="127.0.0.1", port=0),
        http=HttpConfig(host="127.0.0.1", port=0),
        state_dir="/nonexistent-state",
        components={},
    )
    if grpc_kw:
        base = replace(base, grpc=replace(base.grpc, **grpc_kw))
    return replace(base, **rest)


@pytest.fixture
def make_app() -> Iterator[Callable[..., AppThread]]:
    apps: list[AppThread] = []

    def make(config: SidecarConfig | None = None, **kw: Any) -> AppThread:
        app = AppThread(config or core_config(**kw)).start()
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()


@pytest.fixture
def app(make_app: Callable[..., AppThread]) -> AppThread:
    return make_app()


def health_stub(addr: str) -> tuple[grpc.Channel, Any]:
    ch = grpc.insecure_channel(addr)
    return ch, health_pb2_grpc.HealthStub(ch)


def check(addr: str, service: str, timeout: float = 2.0) -> int:
    ch, stub = health_stub(addr)
    with ch:
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status)


def start_sidecar(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait_started: bool = True,
) -> SidecarProcess:
    """Start `python -m sidecar serve ...` on kernel-chosen ports; waits for the 'sidecar started'
    log line, which names the ports it bound."""
    log_path = Path(tempfile.mkstemp(prefix="sidecar-", suffix=".log", dir=tmp_path)[1])
    return testing.start_sidecar(
        "--state-dir",
        str(tmp_path / "state"),
        *args,
        log_path=log_path,
        env=env,
        cwd=REPO,
        wait_started=wait_started,
        timeout=30,
    )


@pytest.fixture
def sidecar_proc(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    procs: list[SidecarProcess] = []

    def start(*args: str, **kw: Any) -> SidecarProcess:
        sp = start_sidecar(tmp_path, *args, **kw)
        procs.append(sp)
        return sp

    yield start
    for sp in procs:
        sp.kill()


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


# -- the webhook server on localhost (test_webhook.py, test_webhook_bounds.py) ------------------


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path, cn="webhook test CA")


@pytest.fixture
def certs(ca: TestCA) -> CertFiles:
    return ca.issue("webhook", sans=("localhost",))


@pytest.fixture
def server(certs: CertFiles) -> Iterator[webhook.WebhookServer]:
    opts = webhook.WebhookOptions(
        tls_cert=certs.cert,
        tls_key=certs.key,
        sidecar_image=IMAGE,
        port=0,
        bind="127.0.0.1",
        cert_reload_interval_s=0.05,
    )
    srv = webhook.WebhookServer(opts)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: webhook.WebhookServer, certs: CertFiles) -> Client:
    return Client(server.port, certs.ca)


@pytest.fixture
def other_fs() -> Iterator[Path]:
    """A folder on another file system than the temporary folder (tmpfs): no hard link there,
    so the last-good keep copies."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tempfile.gettempdir()).st_dev:
        pytest.skip("needs /dev/shm on another file system than the temporary folder")
    folder = Path(tempfile.mkdtemp(prefix="trt-keep-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
