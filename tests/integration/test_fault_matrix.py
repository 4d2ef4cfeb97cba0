"""The fault matrix (issue 6): every row of fault_matrix_table.ROWS against a running sidecar.

One ``python -m sidecar serve --simulate`` process per group (class-scoped), with short
intervals; the real canary worker process, real engine files in a temporary folder and a real
HTTP endpoint for the workload probe. Between rows the scenario is reset to healthy (the GPU
``reset`` counter bumped, engine files and endpoint restored) and the suite waits for every
service to be SERVING again.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sidecar.engine.manifest import EngineManifest, TensorSpec, dump_manifest
from sidecar.engine.plan import make_plan_header
from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc
from sidecar.testing import child_pids, sidecar_argv, wait_until
from sidecar.testing.canary import onnx_engine
from sidecar.testing.mlserver import MLServer, index, infer_version, mlserver_exe, running_mlserver
from sidecar.testing.reload import Watcher

from . import fault_matrix_table as table
from .conftest import REPO, SidecarProcess, start_sidecar
from .fault_matrix_table import ALL_SERVING, ENGINE, FALLBACK, Row

PLAN_VERSION = (10, 13, 0, 35)
PROBE_BUDGET_S = 1.0
STATUS_NAMES = {1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
FAIL = diagnostics_pb2.Condition.FAIL


def plan_bytes(seed: int, version: tuple[int, int, int, int] = PLAN_VERSION, size: int = 64 * 1024) -> bytes:
    body = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return make_plan_header(version)[:28] + body[: size - 28]


def base_config(engine_manifest: Path, workload_url: str, **gpu: Any) -> dict[str, Any]:
    """Short intervals so that every row detects and recovers within a second or two."""
    return {
        "gpu": {
            "poll_interval": "0.2s",
            "nvml_call_timeout": "0.5s",
            # a process-level Xid is reported for this long: longer than detection + the sticky
            # hold of a row that expects it (ecc-contained-xid94), even on a loaded machine
            "xid_report_window": "3s",
            **gpu,
        },
        "canary": {
            "interval": "0.5s",
            "allow_fast_interval": True,
            "timeout": "1s",
            "first_timeout": "3s",
            "restart_backoff_initial": "0.1s",
            "restart_backoff_max": "0.5s",
            "warmup_runs": 0,
        },
        "engines": {
            "list": [{"name": ENGINE, "manifest": str(engine_manifest)}],
            "tensorrt_version": ".".join(map(str, PLAN_VERSION)),
            "stable_window": "50ms",
            "check_interval": "1s",
            "poll_interval": "0.2s",
            "hash_min_interval": "0s",
        },
        "workload": {
            "enabled": True,
            "kind": "http-ready",
            "url": workload_url,
            "ready_path": "/v2/health/ready",
            "interval": "0.2s",
            "timeout": "0.3s",
            "failure_threshold": 3,
        },
    }


class Endpoint:
    """The main server's API as the workload probe sees it: ok, failing (503) or slow."""

    def __init__(self) -> None:
        self.mode = "ok"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                mode = outer.mode
                if mode == "slow":
                    time.sleep(1.0)
                code = 503 if mode == "fail" else 200
                body = b"{}"
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the probe gave up (timeout)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Engine:
    """A real plan-like file + manifest; ``restore()`` puts the verified originals back."""

    folder: Path
    original: bytes = b""
    manifest_text: str = ""
    name: str = ENGINE
    engine_version: str | None = None  # the manifest's `version` (actions rows)
    fallback: str | None = None  # the manifest's `fallback` (actions rows)

    @property
    def plan(self) -> Path:
        return self.folder / "model.plan"

    @property
    def manifest(self) -> Path:
        return self.folder / "model.plan.manifest.yaml"

    def write(
        self,
        data: bytes,
        version: tuple[int, int, int, int] = PLAN_VERSION,
        *,
        engine_version: str | None = None,
        sha256: str | None = None,
    ) -> None:
        """Atomically replace plan and manifest (a new engine rolled out)."""
        m = EngineManifest(
            name=self.name,
            version=engine_version or self.engine_version,
            fallback=self.fallback,
            file="model.plan",
            directory=self.folder,
            sha256=sha256 or hashlib.sha256(data).hexdigest(),
            size=len(data),
            tensorrt_version=".".join(map(str, version)),
            compute_capability="9.0",
            inputs=(TensorSpec("x", "float32", (1, 16)),),
        )
        tmp_m = self.folder / ".manifest.new"
        dump_manifest(m, tmp_m)
        self.replace_plan(data)
        os.replace(tmp_m, self.manifest)

    def replace_plan(self, data: bytes) -> None:
        tmp = self.folder / ".model.plan.new"
        tmp.write_bytes(data)
        os.replace(tmp, self.plan)

    def create(self) -> Engine:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.original = plan_bytes(0)
        self.write(self.original)
        self.manifest_text = self.manifest.read_text()
        return self

    def intact(self) -> bool:
        try:
            return self.plan.read_bytes() == self.original and self.manifest.read_text() == self.manifest_text
        except OSError:
            return False

    def restore(self) -> None:
        if not self.intact():
            self.write(self.original)


METRIC_SPEC = re.compile(r"^(\w+)\{(.*)\} (\+=|==|>=) ([\d.]+)$")
SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metric_spec(spec: str) -> tuple[str, dict[str, str], str, float]:
    m = METRIC_SPEC.match(spec)
    assert m, f"bad metric spec {spec!r}"
    return m.group(1), dict(LABEL.findall(m.group(2))), m.group(3), float(m.group(4))


@dataclass
class Sidecar:
    """One running sidecar process and everything it points at."""

    tmp: Path
    config: dict[str, Any]
    engine: Engine
    endpoint: Endpoint
    proc: SidecarProcess | None = None
    reset: int = 0
    channel: grpc.Channel | None = None
    extra_args: tuple[str, ...] = ()
    restarts: list[int] = field(default_factory=list)
    held: list[socket.socket] = field(default_factory=list)  # attack connections (closed by clear)

    @property
    def scenario_path(self) -> Path:
        return self.tmp / "scenario.yaml"

    @property
    def config_path(self) -> Path:
        return self.tmp / "config.yaml"

    # -- process ---------------------------------------------------------------------------
    def start(self) -> Sidecar:
        if not self.scenario_path.exists():
            self.write_scenario({})
        if not self.config_path.exists():
            self.config_path.write_text(yaml.safe_dump(self.config))
        self.proc = start_sidecar(
            self.tmp,
            "--simulate",
            "--scenario",
            str(self.scenario_path),
            "--config",
            str(self.config_path),
            "--log-level",
            "info",
        )
        self.channel = grpc.insecure_channel(self.proc.addr)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        return self.proc.stop(sig, timeout=20)

    def kill(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None and self.proc.proc.poll() is None:
            self.proc.proc.kill()
            self.proc.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    # -- inputs ----------------------------------------------------------------------------
    def write_scenario(self, doc: dict[str, Any]) -> None:
        tmp = self.tmp / ".scenario.new"
        tmp.write_text(yaml.safe_dump(doc))
        os.replace(tmp, self.scenario_path)

    def scenario(self, row: Row | None = None, *, cleared: Row | None = None) -> None:
        """The healthy scenario (current reset counter) with the row's fault merged in, or
        with only what stays after the fault is removed (``cleared``)."""
        gpu: dict[str, Any] = {"reset": self.reset}
        doc: dict[str, Any] = {}
        if row is not None:
            gpu.update(row.gpu)
            doc.update(row.scenario or {})
        if cleared is not None:
            gpu.update(cleared.keep)
        doc["gpus"] = [gpu]
        self.write_scenario(doc)

    def write_config(self, doc: dict[str, Any] | str) -> None:
        text = doc if isinstance(doc, str) else yaml.safe_dump(doc)
        tmp = self.tmp / ".config.new"
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    # -- observation -----------------------------------------------------------------------
    def diag(self) -> diagnostics_pb2.ConditionsResponse:
        assert self.channel is not None
        stub = diagnostics_pb2_grpc.DiagnosticsStub(self.channel)
        resp: diagnostics_pb2.ConditionsResponse = stub.GetConditions(
            diagnostics_pb2.ConditionsRequest(), timeout=2
        )
        return resp

    def check(self, service: str) -> str:
        assert self.channel is not None
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
        return STATUS_NAMES.get(int(resp.status), str(resp.status))

    def probe_fresh(self, service: str = "readiness") -> tuple[str, float]:
        """A kubelet-style probe: fresh connection, 1 s budget covering dial + Check."""
        assert self.proc is not None
        t0 = time.monotonic()
        with grpc.insecure_channel(self.proc.addr) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=PROBE_BUDGET_S
            )
        return STATUS_NAMES.get(int(resp.status), "?"), time.monotonic() - t0

    def metrics_text(self) -> str:
        assert self.proc is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proc.http_port}/metrics", timeout=2) as r:
            return str(r.read().decode())

    def metric(self, name: str, labels: dict[str, str]) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when none)."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            m = SAMPLE.match(line)
            if not m or m.group(1) != name:
                continue
            have = dict(LABEL.findall(m.group(2) or ""))
            if all(have.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def check_runs(self) -> dict[str, float]:
        """Runs so far of every check loop (all outcomes), from trt_health_check_runs_total."""
        out: dict[str, float] = {}
        for line in self.metrics_text().splitlines():
            m = SAMPLE.match(line)
            if m and m.group(1) == "trt_health_check_runs_total":
                check = dict(LABEL.findall(m.group(2) or "")).get("check", "")
                out[check] = out.get(check, 0.0) + float(m.group(3))
        return out

    def resets_observed(self) -> float:
        return self.metric("trt_health_gpu_resets_observed_total", {})

    def state(self) -> tuple[dict[str, str], dict[str, Any]]:
        d = self.diag()
        services = {s.name: "SERVING" if s.serving else "NOT_SERVING" for s in d.services}
        conditions = {c.name: c for c in d.conditions}
        return services, conditions

    def describe(self) -> str:
        services, conditions = self.state()
        bad = {k: v for k, v in services.items() if v != "SERVING"}
        conds = [
            f"{c.name}: {c.reason} ({c.severity}, status {c.status}) {c.message[:80]}"
            for c in conditions.values()
            if c.status == FAIL or c.reason not in ("", "CanaryPassed")
        ]
        return f"not serving: {bad}\nconditions:\n  " + "\n  ".join(conds)

    # -- healing ---------------------------------------------------------------------------
    def healthy(self) -> bool:
        services, conditions = self.state()
        if any(services.get(s) != v for s, v in ALL_SERVING.items()):
            return False
        return not any(c.status == FAIL for c in conditions.values())

    def heal(self, timeout: float = 15.0) -> None:
        """Everything healthy: bump the reset counter (clears every sticky latch), restore the
        engine and the endpoint, and wait until every service is SERVING and no check fails."""
        self.endpoint.mode = "ok"
        self.engine.restore()
        before = self.resets_observed()
        self.reset += 1
        self.scenario()
        wait_for(lambda: self.resets_observed() > before, timeout, self, "reset observed")
        wait_for(self.healthy, timeout, self, "healthy after heal")


def wait_for(cond: Callable[[], Any], timeout: float, sc: Sidecar, what: str) -> Any:
    """Poll ``cond`` until true or the deadline; the failure message shows the sidecar state."""
    deadline = time.monotonic() + timeout
    while True:
        if not sc.alive():
            raise AssertionError(f"sidecar process died while waiting for {what}")
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s\n{sc.describe()}")
        time.sleep(0.02)


def matches(sc: Sidecar, row: Row) -> bool:
    """The services and reasons the row expects hold right now."""
    services, conditions = sc.state()
    for service, want in row.services().items():
        if services.get(service) != want:
            return False
    for name, reason in row.reasons.items():
        c = conditions.get(name)
        if c is None or c.reason != reason:
            return False
    return True


def recovered(sc: Sidecar, row: Row) -> bool:
    services, conditions = sc.state()
    if any(services.get(s) != "SERVING" for s in ALL_SERVING):
        return False
    return all(name in conditions and conditions[name].status != FAIL for name in row.reasons)


# -- actions (rows that are not a scenario change) -----------------------------------------


def inject(sc: Sidecar, row: Row) -> None:
    action = row.action
    if not action:
        sc.scenario(row)
    elif action == "engine_missing":
        sc.engine.plan.unlink()
    elif action == "engine_corrupt":
        data = bytearray(sc.engine.original)
        data[1000] ^= 0xFF
        sc.engine.replace_plan(bytes(data))
    elif action == "engine_replaced":
        sc.engine.write(plan_bytes(1))
    elif action == "engine_wrong_version":
        sc.engine.write(plan_bytes(2, version=(10, 12, 0, 1)), version=(10, 12, 0, 1))
    elif action == "engine_bad_new_version":
        sc.engine.write(plan_bytes(2), engine_version="2", sha256="0" * 64)
    elif action == "gpu_fault_bad_engine":
        sc.scenario(row)
        sc.engine.write(plan_bytes(2), engine_version="2", sha256="0" * 64)
    elif action == "engine_flapping":
        for i in range(2):  # two rollbacks, each followed by a fixed version 2
            sc.engine.write(plan_bytes(10 + i), engine_version="2", sha256=f"{i}" * 64)
            wait_for(lambda: rollback_reason(sc) == "RolledBack", 10, sc, f"rollback {i + 1}")
            sc.engine.write(plan_bytes(10 + i), engine_version="2")
            wait_for(lambda: rollback_reason(sc) == "", 10, sc, f"release {i + 1}")
        sc.engine.write(plan_bytes(20), engine_version="2", sha256="2" * 64)
    elif action == "worker_kill":
        assert sc.proc is not None
        kids = child_pids(sc.proc.proc.pid)
        assert kids, "the serving process has no canary worker child"
        for pid in kids:
            os.kill(pid, signal.SIGKILL)
    elif action == "workload_failing":
        sc.endpoint.mode = "fail"
    elif action == "workload_slow":
        sc.endpoint.mode = "slow"
    elif action in BAD_SCENARIOS:
        text, refusal = BAD_SCENARIOS[action]
        refused_before = len(scenario_refusals(sc, refusal))
        tmp = sc.tmp / ".scenario.new"
        tmp.write_text(text)
        os.replace(tmp, sc.scenario_path)
        # the witness: the document was read and refused in one short log line
        wait_for(lambda: len(scenario_refusals(sc, refusal)) > refused_before, 5, sc, refusal)
        assert all(len(json.dumps(r)) < 2000 for r in scenario_refusals(sc, refusal))
        sc.scenario(row)  # a valid scenario after it is still seen
    elif action == "http_slowloris":
        assert sc.proc is not None
        for _ in range(600):
            s = socket.create_connection(("127.0.0.1", sc.proc.http_port), timeout=5)
            s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
            sc.held.append(s)
    else:
        raise AssertionError(f"no injector for action {action!r}")


BOMB_LEVELS = "".join(
    f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)
BAD_SCENARIOS = {
    "scenario_bomb": (
        'canary:\n  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + BOMB_LEVELS
        + "  mode: *g\n",
        "expands to more than",
    ),
    "scenario_deep": ("gpus: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper than"),
    "scenario_huge": ("gpus: []\n" + "#" * (50 << 20) + "\n", "larger than the limit"),
}


def scenario_refusals(sc: Sidecar, fragment: str) -> list[dict[str, Any]]:
    assert sc.proc is not None
    return [
        r
        for r in sc.proc.log_records()
        if r.get("msg") == "scenario file ignored, last good state stays" and fragment in str(r.get("error"))
    ]


def clear(sc: Sidecar, row: Row) -> None:
    """Remove the fault without any evidence of a reset."""
    sc.scenario(cleared=row)
    sc.endpoint.mode = "ok"
    sc.engine.restore()
    while sc.held:
        sc.held.pop().close()


def evidence(sc: Sidecar) -> None:
    """The evidence that clears a sticky fault: a GPU reset (scenario ``reset`` changed)."""
    sc.reset += 1
    sc.scenario()


CHECK_OF_PREFIX = {"gpu": "gpu", "canary": "canary", "engine": "engines", "workload": "workload"}


def row_checks(row: Row) -> set[str]:
    """The check loops that evaluate the row's conditions (by condition name)."""
    return {CHECK_OF_PREFIX[c.split("/")[0]] for c in row.reasons if c.split("/")[0] in CHECK_OF_PREFIX}


def hold(sc: Sidecar, row: Row, active: set[str], what: str, hold_s: float | None = None) -> None:
    """The row's state holds for ``hold_s`` and until every ``active`` check loop ran at least
    twice more: the witness that the sidecar re-evaluated the cleared input, not just that time
    passed."""
    runs_then = sc.check_runs()
    deadline = time.monotonic() + (row.hold_s if hold_s is None else hold_s)

    def reevaluated() -> bool:
        now = sc.check_runs()
        return all(now.get(name, 0.0) >= runs_then.get(name, 0.0) + 2 for name in active)

    guard = time.monotonic() + 30  # a hang guard only
    while time.monotonic() < deadline or not reevaluated():
        assert matches(sc, row), f"{what}\n{sc.describe()}"
        assert time.monotonic() < guard, f"{what}: checks did not run again: {sc.check_runs()}"
        time.sleep(0.02)


def assert_probes(sc: Sidecar, row: Row, n: int = 3) -> None:
    """Fresh-connection probes answer within the 1 s budget with the expected status."""
    want = row.services()["readiness"]
    for _ in range(n):
        status, elapsed = sc.probe_fresh("readiness")
        assert elapsed < PROBE_BUDGET_S, f"probe took {elapsed:.3f}s during {row.id}"
        assert status == want, f"probe said {status} during {row.id}, expected {want}"


def assert_metric(sc: Sidecar, row: Row, before: float) -> None:
    name, labels, op, value = parse_metric_spec(row.metric)

    def ok() -> bool:
        now = sc.metric(name, labels)
        if op == "+=":
            return now - before >= value
        if op == "==":
            return now == value
        return now >= value

    wait_for(ok, 2.0, sc, f"metric {row.metric} (now {sc.metric(name, labels)}, before {before})")


def rollback_reason(sc: Sidecar) -> str | None:
    c = sc.state()[1].get(f"actions/{ENGINE}/rollback")
    return None if c is None else str(c.reason)


def run_row(sc: Sidecar, row: Row, during: Callable[[], None] | None = None) -> None:
    """Inject, expect statuses / reasons / metric / probes, then recovery or stickiness.
    ``during`` asserts more while the fault holds (what a real main server serves)."""
    name, labels, _, _ = parse_metric_spec(row.metric)
    before = sc.metric(name, labels)
    runs_before = sc.check_runs()  # the checks that run during the fault run at this cadence
    inject(sc, row)
    wait_for(lambda: matches(sc, row), row.detect_s, sc, f"{row.id}: expected statuses and reasons")
    for service, want in row.services().items():
        assert sc.check(service) == want, f"{row.id}: Check({service!r})"
    assert_probes(sc, row)
    assert_metric(sc, row, before)
    if during is not None:
        during()
    runs_now = sc.check_runs()
    active = {n for n in row_checks(row) if runs_now.get(n, 0.0) > runs_before.get(n, 0.0)}
    clear(sc, row)
    if row.recovery == "sticky":
        hold(sc, row, active, f"{row.id}: not sticky after the fault cleared")
        assert_probes(sc, row, n=1)
        evidence(sc)
    wait_for(lambda: recovered(sc, row), row.recover_s, sc, f"{row.id}: recovery")
    assert sc.alive()


def params(group: str) -> list[Any]:
    out = []
    for row in table.rows(group):
        marks = [pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else []
        out.append(pytest.param(row, id=row.id, marks=marks))
    return out


def healthy_sidecar(sc: Sidecar) -> Iterator[Sidecar]:
    """``sc`` started and healthy; killed, and its endpoint closed, afterwards."""
    try:
        sc.start()
        wait_for(sc.healthy, 30, sc, "healthy after start")
        yield sc
    finally:
        sc.kill()
        sc.endpoint.close()


def make_sidecar(tmp: Path, **gpu: Any) -> Iterator[Sidecar]:
    endpoint = Endpoint()
    engine = Engine(tmp / "engines" / ENGINE).create()
    yield from healthy_sidecar(
        Sidecar(tmp, base_config(engine.manifest, endpoint.url, **gpu), engine, endpoint)
    )


@pytest.fixture(scope="class")
def main_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    yield from make_sidecar(tmp_path_factory.mktemp("fm-main"))


@pytest.fixture(scope="class")
def multi_gpu_sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    yield from make_sidecar(tmp_path_factory.mktemp("fm-multi"), multi_gpu_model=True)


@pytest.fixture
def own_sidecar(tmp_path: Path) -> Iterator[Sidecar]:
    yield from make_sidecar(tmp_path)


class TestMain:
    """Rows sharing one sidecar process; the scenario is reset to healthy between rows."""

    @pytest.mark.parametrize("row", params("main"))
    def test_row(self, main_sidecar: Sidecar, row: Row) -> None:
        """The fault is detected with the expected statuses, reason and metric, and clears."""
        sc = main_sidecar
        try:
            run_row(sc, row)
        finally:
            if sc.alive():
                sc.heal()
        assert sc.alive(), "the serving process died"


class TestMultiGpuModel:
    """Rows that need `gpu.multi_gpu_model: true`."""

    @pytest.mark.parametrize("row", params("multi_gpu"))
    def test_row(self, multi_gpu_sidecar: Sidecar, row: Row) -> None:
        """NVLink / peer-to-peer faults gate readiness when the model spans GPUs."""
        sc = multi_gpu_sidecar
        try:
            run_row(sc, row)
        finally:
            if sc.alive():
                sc.heal()


def _row(row_id: str) -> Row:
    (row,) = [r for r in table.ROWS if r.id == row_id]
    return row


def _xfail_mark(row_id: str) -> list[Any]:
    row = _row(row_id)
    return [pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else []


@pytest.mark.parametrize(
    "row",
    [pytest.param(_row("config-reload-invalid"), marks=_xfail_mark("config-reload-invalid"))],
    ids=["config-reload-invalid"],
)
def test_config_reload_invalid_keeps_old_config(own_sidecar: Sidecar, row: Row) -> None:
    """An invalid config file change is rejected and reported; the old config keeps working."""
    sc = own_sidecar
    assert sc.proc is not None
    before = sc.metric("trt_health_config_reloads_total", {"result": "rejected"})
    good = dict(sc.config)
    sc.write_config({**good, "policy": {"failure_threshold": 0}})
    wait_for(
        lambda: sc.metric("trt_health_config_reloads_total", {"result": "rejected"}) > before,
        5,
        sc,
        "reload rejected",
    )
    records = [r for r in sc.proc.log_records() if r.get("msg") == "config reload rejected, old config stays"]
    assert records and "policy.failure_threshold" in str(records[-1].get("problems"))
    assert sc.healthy()
    assert_probes(sc, row)
    # the old config still drives the checks: a fault is still detected and clears
    fatal = _row("xid-79-node_fatal")
    run_row(sc, fatal)
    applied = sc.metric("trt_health_config_reloads_total", {"result": "applied"})
    sc.write_config({**good, "policy": {"failure_threshold": 2}})
    wait_for(
        lambda: sc.metric("trt_health_config_reloads_total", {"result": "applied"}) > applied,
        5,
        sc,
        "valid reload applied",
    )
    wait_for(sc.healthy, 10, sc, "healthy after the valid reload")
    assert sc.alive()


@pytest.mark.parametrize(
    "row",
    [pytest.param(_row("config-reload-during-fatal"), marks=_xfail_mark("config-reload-during-fatal"))],
    ids=["config-reload-during-fatal"],
)
def test_config_reload_during_fatal_keeps_fatal(own_sidecar: Sidecar, row: Row) -> None:
    """A valid reload that restarts the components does not forget a sticky fatal Xid."""
    sc = own_sidecar
    sc.scenario(_row("xid-79-node_fatal"))
    wait_for(lambda: matches(sc, row), row.detect_s, sc, "Xid 79 detected")
    sc.scenario()  # the Xid is gone from the event stream; only the latch remembers it
    applied = sc.metric("trt_health_config_reloads_total", {"result": "applied"})
    cfg = dict(sc.config)
    cfg["gpu"] = {**cfg["gpu"], "poll_interval": "0.25s"}
    sc.write_config(cfg)
    wait_for(
        lambda: sc.metric("trt_health_config_reloads_total", {"result": "applied"}) > applied,
        5,
        sc,
        "reload applied",
    )
    # after the components restarted, the sidecar must still say fatal, with the reason
    hold(sc, row, {"gpu"}, "fatal state lost across the reload", hold_s=2.0)
    assert_probes(sc, row)
    evidence(sc)
    wait_for(lambda: recovered(sc, row), row.recover_s, sc, "recovery after the reset")
    assert sc.alive()


@pytest.mark.parametrize(
    "row",
    [pytest.param(_row("config-reload-failed-rebuild"), marks=_xfail_mark("config-reload-failed-rebuild"))],
    ids=["config-reload-failed-rebuild"],
)
def test_config_reload_failed_rebuild_keeps_gpu_monitoring(own_sidecar: Sidecar, row: Row) -> None:
    """A reload whose new GPU component cannot be built (or comes up on a broken latch file)
    never leaves the GPU unmonitored: a later Xid 79 still turns readiness NOT_SERVING."""
    sc = own_sidecar
    state = sc.tmp / "state" / "gpu-latches.json"
    state.write_bytes(b"\xff\xfe" + random.Random(10).randbytes(298))  # not UTF-8, not JSON

    def reloads() -> float:
        return sum(
            sc.metric("trt_health_config_reloads_total", {"result": r}) for r in ("applied", "rejected")
        )

    before = reloads()
    xids = sc.metric("trt_health_gpu_xid_events_total", {"code": "79"})
    cfg = dict(sc.config)
    cfg["gpu"] = {**cfg["gpu"], "poll_interval": "0.25s"}
    sc.write_config(cfg)
    wait_for(lambda: reloads() > before, 10, sc, "reload attempted")  # witness: the reload ran
    sc.scenario(_row("xid-79-node_fatal"))
    wait_for(lambda: matches(sc, row), row.detect_s, sc, "Xid 79 detected after the reload")
    assert sc.metric("trt_health_gpu_xid_events_total", {"code": "79"}) > xids
    assert_probes(sc, row)
    for aside in (sc.tmp / "state").glob("gpu-latches.json.corrupt-*"):
        aside.unlink()  # what the operator does for a corrupt latch file (latch-store-corrupt)
    evidence(sc)
    wait_for(lambda: recovered(sc, row), row.recover_s, sc, "recovery after the reset")
    assert sc.alive()


@pytest.mark.parametrize(
    "row",
    [pytest.param(_row("restart-mid-fatal"), marks=_xfail_mark("restart-mid-fatal"))],
    ids=["restart-mid-fatal"],
)
def test_restart_mid_fatal_stays_fatal(own_sidecar: Sidecar, row: Row) -> None:
    """SIGTERM during Xid 79 and a restart on the same state dir: still fatal, with the reason,
    never SERVING in between; a reset clears it."""
    sc = own_sidecar
    sc.scenario(_row("xid-79-node_fatal"))
    wait_for(lambda: matches(sc, row), row.detect_s, sc, "Xid 79 detected")
    sc.scenario()  # the fault is no longer in the event stream: only the persisted latch knows
    assert sc.stop(signal.SIGTERM) == 0
    sc.start()
    # readiness must never be SERVING while the restarted sidecar loads its latches
    seen_serving = False

    def settled() -> bool:
        nonlocal seen_serving
        services, conditions = sc.state()
        seen_serving |= services.get("readiness") == "SERVING"
        canary = conditions.get("canary")
        return canary is not None and canary.reason == "CanaryPassed" and matches(sc, row)

    wait_for(settled, 20, sc, "restarted sidecar settled")
    assert not seen_serving, "readiness was SERVING after the restart despite the latched Xid 79"
    _, conditions = sc.state()
    assert "XidFatal79" in conditions[f"{table.GPU}/xid"].reason
    assert sc.metric("trt_health_gpu_fatal_latches", {}) == 1
    assert_probes(sc, row)
    evidence(sc)
    wait_for(lambda: recovered(sc, row), row.recover_s, sc, "recovery after the reset")
    assert sc.alive()


def _never_serving_until(sc: Sidecar, row: Row, what: str) -> None:
    """Wait for the restarted sidecar's first canary and the row's state; readiness must not
    be SERVING at any point in between."""
    seen_serving = False

    def settled() -> bool:
        nonlocal seen_serving
        services, conditions = sc.state()
        seen_serving |= services.get("readiness") == "SERVING"
        canary = conditions.get("canary")
        return canary is not None and canary.reason == "CanaryPassed" and matches(sc, row)

    wait_for(settled, 20, sc, what)
    assert not seen_serving, f"readiness was SERVING after the restart ({row.id})"


@pytest.mark.parametrize(
    "row",
    [pytest.param(_row("restart-xid-with-reset"), marks=_xfail_mark("restart-xid-with-reset"))],
    ids=["restart-xid-with-reset"],
)
def test_restart_xid_with_reset_stays_fatal(own_sidecar: Sidecar, row: Row) -> None:
    """Xid 79 and a reset in one scenario change, SIGKILL as soon as readiness drops, restart
    with the Xid gone and the reset kept: still fatal (whatever was persisted before the kill);
    only a later reset clears it."""
    sc = own_sidecar
    sc.reset += 1
    sc.write_scenario({"gpus": [{"xid": [79], "reset": sc.reset}]})
    wait_for(lambda: sc.check("readiness") == table.N, 3, sc, "readiness NOT_SERVING")
    sc.kill()
    sc.scenario()  # xid: [], the same reset counter
    sc.start()
    _never_serving_until(sc, row, "restarted sidecar settled")
    assert sc.metric("trt_health_gpu_fatal_latches", {}) == 1
    assert_probes(sc, row)
    evidence(sc)
    wait_for(lambda: recovered(sc, row), row.recover_s, sc, "recovery after a later reset")
    assert sc.alive()


@pytest.mark.parametrize(
    "row",
    [pytest.param(_row("latch-store-corrupt"), marks=_xfail_mark("latch-store-corrupt"))],
    ids=["latch-store-corrupt"],
)
def test_latch_store_corrupt_gates_until_the_aside_file_is_removed(own_sidecar: Sidecar, row: Row) -> None:
    """A latch file that is not UTF-8 at start: the sidecar runs (no crash loop), readiness is
    never SERVING, the bytes are kept aside; removing the aside file brings readiness back."""
    sc = own_sidecar
    assert sc.stop(signal.SIGTERM) == 0
    state = sc.tmp / "state"
    bad = b"\xff" + hashlib.sha256(b"corrupt").digest() * 9 + b"\x00" * 11
    (state / "gpu-latches.json").write_bytes(bad)
    sc.start()
    _never_serving_until(sc, row, "corrupt latch store reported")
    assert_metric(sc, row, 0.0)
    [aside] = state.glob("gpu-latches.json.corrupt-*")
    assert aside.read_bytes() == bad
    assert_probes(sc, row)
    aside.unlink()
    wait_for(lambda: recovered(sc, row), row.recover_s, sc, "recovery after the aside file went")
    assert sc.alive()


@pytest.mark.parametrize(
    "row",
    [pytest.param(_row("latch-store-unwritable"), marks=_xfail_mark("latch-store-unwritable"))],
    ids=["latch-store-unwritable"],
)
def test_latch_store_unwritable_gates_until_a_write_succeeds(own_sidecar: Sidecar, row: Row) -> None:
    """The state dir becomes unusable (a regular file in its place: every write fails, as on a
    full disk) and Xid 79 must be persisted: `gpu/state` LatchStoreUnwritable gates beside the
    Xid; once writable, the latch is written; a reset then clears the Xid."""
    sc = own_sidecar
    state = sc.tmp / "state"
    shutil.rmtree(state)
    state.write_text("not a directory")
    sc.scenario(_row("xid-79-node_fatal"))
    wait_for(lambda: matches(sc, row), row.detect_s, sc, "unwritable latch store reported")
    assert_metric(sc, row, 0.0)
    assert_probes(sc, row)
    state.unlink()
    sc.scenario()
    wait_for(lambda: sc.state()[1]["gpu/state"].status != FAIL, 5, sc, "latch store writable")
    assert "XidFatal79" in (state / "gpu-latches.json").read_text()
    evidence(sc)
    wait_for(lambda: recovered(sc, row), row.recover_s, sc, "recovery after the reset")
    assert sc.alive()


def test_fault_matrix_doc_in_sync() -> None:
    """docs/fault-matrix.md is exactly what the table generates (regenerate it when it fails)."""
    doc = REPO / "docs" / "fault-matrix.md"
    assert doc.exists(), (
        "run: python -m tests.integration.fault_matrix_table --markdown > docs/fault-matrix.md"
    )
    assert doc.read_text() == table.markdown(), (
        "docs/fault-matrix.md is stale: python -m tests.integration.fault_matrix_table --markdown"
        " > docs/fault-matrix.md"
    )


@pytest.mark.parametrize("row", [_row("sighup-storm")], ids=["sighup-storm"])
def test_sighup_storm_is_one_reload_and_one_worker(own_sidecar: Sidecar, row: Row) -> None:
    """A config change, then 20 SIGHUPs: reloads run one at a time and coalesce; nothing is
    rejected, readiness never leaves SERVING (a Watch stream sees it), one canary worker."""
    sc = own_sidecar
    assert sc.proc is not None
    watch = Watcher(sc.proc.addr, "readiness")
    try:
        wait_until(lambda: watch.seen == [health_pb2.HealthCheckResponse.SERVING], timeout=5)
        applied = sc.metric("trt_health_config_reloads_total", {"result": "applied"})
        cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in sc.config.items()}
        cfg["canary"]["interval"] = "0.9s"
        sc.write_config(cfg)
        for _ in range(20):
            sc.proc.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: (
                sc.metric("trt_health_config_reloads_total", {"result": "applied"}) == applied + 1
                and sc.metric("trt_health_config_reloads_total", {"result": "unchanged"}) >= 1
            ),
            30,
            sc,
            "one reload applied, the storm coalesced",
        )
        assert sc.metric("trt_health_config_reloads_total", {"result": "rejected"}) == 0
        wait_for(lambda: len(child_pids(sc.proc.proc.pid)) == 1, 10, sc, "one canary worker")
        assert sc.healthy()
        assert watch.seen == [health_pb2.HealthCheckResponse.SERVING], watch.seen
        assert_probes(sc, row)
    finally:
        watch.close()


@pytest.mark.parametrize("row", [_row("unix-socket-regular-file")], ids=["unix-socket-regular-file"])
def test_unix_socket_path_holding_a_file_is_kept(tmp_path: Path, row: Row) -> None:
    """`--unix-socket` at a regular file: exit 3 naming it, the file untouched."""
    path = tmp_path / "data.bin"
    data = os.urandom(4096)
    path.write_bytes(data)
    proc = subprocess.run(
        sidecar_argv("--simulate", "--state-dir", str(tmp_path / "state"), "--unix-socket", str(path)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert str(path) in proc.stderr and "not a socket" in proc.stderr
    assert path.read_bytes() == data


def test_every_group_has_a_runner() -> None:
    """Each row of the table is run by one of the tests above (no silently skipped rows)."""
    own = {
        "config-reload-invalid",
        "config-reload-during-fatal",
        "restart-mid-fatal",
        "restart-xid-with-reset",
        "latch-store-corrupt",
        "latch-store-unwritable",
        "config-reload-failed-rebuild",
        "sighup-storm",
        "unix-socket-regular-file",
    }
    for row in table.ROWS:
        assert row.group in ("main", "multi_gpu", *ACTION_GROUPS) or row.id in own, row.id


def test_changing_every_section_at_once_never_blinks_readiness(own_sidecar: Sidecar) -> None:
    """A real `serve` process with gpu, canary, engines and workload: every section's interval
    changes in one config write; readiness stays SERVING throughout (a Watch stream sees it)."""
    sc = own_sidecar
    assert sc.proc is not None
    watch = Watcher(sc.proc.addr, "readiness")
    try:
        wait_until(lambda: watch.seen == [health_pb2.HealthCheckResponse.SERVING], timeout=5)
        applied = sc.metric("trt_health_config_reloads_total", {"result": "applied"})
        cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in sc.config.items()}
        cfg["gpu"]["poll_interval"] = "0.3s"
        cfg["canary"]["interval"] = "0.7s"
        cfg["engines"]["check_interval"] = "2s"
        cfg["workload"]["interval"] = "0.3s"
        sc.write_config(cfg)
        wait_for(
            lambda: sc.metric("trt_health_config_reloads_total", {"result": "applied"}) > applied,
            30,
            sc,
            "reload applied",
        )
        # witness: the replacements report (a canary passed after the swap, every check known)
        passes = sc.metric("trt_health_canary_results_total", {"outcome": "pass"})
        wait_for(
            lambda: sc.metric("trt_health_canary_results_total", {"outcome": "pass"}) > passes,
            10,
            sc,
            "a canary of the new worker passed",
        )
        assert sc.healthy()
        assert watch.seen == [health_pb2.HealthCheckResponse.SERVING], (
            f"readiness changed during the reload: {watch.seen}"
        )
    finally:
        watch.close()


# -- actions: a real MLServer serving versions 0 (the fallback), 1 and 2 of the model ---------

ACTION_GROUPS = {"actions": "prod-a", "actions_flap": "prod-flap", "actions_dry": "prod-dry"}
ALL_VERSIONS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def fm_mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServer]:
    if mlserver_exe() is None:
        pytest.skip("MLServer not available: set TRT_HEALTH_TEST_MLSERVER")
    models = {model: ALL_VERSIONS for model in ACTION_GROUPS.values()}
    with running_mlserver(tmp_path_factory.mktemp("fm-mlserver"), models) as server:
        yield server


def make_actions_sidecar(tmp: Path, server: MLServer, group: str) -> Iterator[Sidecar]:
    model = ACTION_GROUPS[group]
    endpoint = Endpoint()
    engine = Engine(tmp / "engines" / ENGINE, engine_version="1", fallback=FALLBACK).create()
    # the fallback runs on CPU (ONNX), so that it has its own canary: verified, then released
    fallback = onnx_engine(tmp / "engines" / FALLBACK, FALLBACK, version="0")
    cfg = base_config(engine.manifest, endpoint.url)
    cfg["engines"]["list"].append({"name": FALLBACK, "manifest": str(fallback)})
    cfg["canary"]["production_engines"] = [
        {"manifest": str(fallback), "memory_budget_mib": 64, "release_after_verify": True}
    ]
    cfg["actions"] = {
        "enabled": True,
        "dry_run": group == "actions_dry",
        "server": "mlserver",
        "url": server.url,
        "repository_dir": str(server.root / model),
        "interval": "0.2s",
        "timeout": "5s",
        "engines": [{"engine": ENGINE, "model": model, "rollback": True, "degrade": group == "actions"}],
        "rollback": {"backoff_initial": "0.1s", "max_rollbacks": 2, "flap_window": "1h"},
        "degrade": {
            "enter_after": "0.3s",
            "restore_after": "1s",
            "min_free_mib": 1000,
            "canary_latency": False,
            "throttling": True,
            "require_fallback_canary": True,  # canary/engine/prod-fallback passed (the default)
        },
    }
    yield from healthy_sidecar(Sidecar(tmp, cfg, engine, endpoint))


def run_actions_row(sc: Sidecar, server: MLServer, row: Row, model: str) -> None:
    """The row, plus what the real server lists and which version answers while the fault
    holds, and that every version is listed again (2 answering) once it cleared."""
    want = row.served.split(",")

    def during() -> None:
        assert index(server.url, model) == want, f"{row.id}: the server lists {index(server.url, model)}"
        assert infer_version(server.url, model)[0] == max(want, key=int)

    assert index(server.url, model) == ALL_VERSIONS
    run_row(sc, row, during)
    wait_for(lambda: index(server.url, model) == ALL_VERSIONS, 10, sc, f"{row.id}: every version again")
    assert infer_version(server.url, model)[0] == "2"


@pytest.fixture(scope="class")
def actions_sidecar(tmp_path_factory: pytest.TempPathFactory, fm_mlserver: MLServer) -> Iterator[Sidecar]:
    yield from make_actions_sidecar(tmp_path_factory.mktemp("fm-actions"), fm_mlserver, "actions")


class TestActions:
    """Rollback, blame and degraded serving against a real MLServer (docs/actions.md)."""

    @pytest.mark.parametrize("row", params("actions"))
    def test_row(self, actions_sidecar: Sidecar, fm_mlserver: MLServer, row: Row) -> None:
        sc = actions_sidecar
        try:
            run_actions_row(sc, fm_mlserver, row, ACTION_GROUPS["actions"])
        finally:
            if sc.alive():
                sc.heal()


@pytest.mark.parametrize("group", ["actions_flap", "actions_dry"])
def test_actions_row_own_sidecar(tmp_path: Path, fm_mlserver: MLServer, group: str) -> None:
    """Rows that need a sidecar of their own (the flap window's count, dry_run)."""
    (row,) = table.rows(group)
    for sc in make_actions_sidecar(tmp_path, fm_mlserver, group):
        run_actions_row(sc, fm_mlserver, row, ACTION_GROUPS[group])
