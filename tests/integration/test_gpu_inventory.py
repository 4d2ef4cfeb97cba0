"""A GPU that leaves the inventory takes its conditions, its `gpu/<uuid>` service and its metric
series with it; one that vanishes holding a fatal latch stays reported (a `serve --simulate`
process driven through its scenario file, observed through gRPC and /metrics)."""

from __future__ import annotations

import os
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from sidecar.core.values import Severity
from sidecar.gpu.component import GpuComponent
from sidecar.gpu.simulated import SimulatedBackend
from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc
from sidecar.runtime.scenario import ScenarioFile
from sidecar.testing import RecordingSink
from sidecar.testing.gpu import fast_config, gating

from .conftest import SidecarProcess, start_sidecar, wait_until

A, B = "GPU-sim-0", "GPU-sim-1"


class Pod:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.scenario = tmp / "scenario.yaml"
        self.config = tmp / "config.yaml"
        self.config.write_text(
            yaml.safe_dump({"gpu": {"poll_interval": "0.1s", "inforom_interval": "1s"}})
        )
        self.proc: SidecarProcess | None = None

    def write(self, doc: dict[str, Any]) -> None:
        tmp = self.tmp / ".scenario.new"
        tmp.write_text(yaml.safe_dump(doc))
        os.replace(tmp, self.scenario)

    def start(self) -> None:
        self.proc = start_sidecar(
            self.tmp, "--simulate", "--scenario", str(self.scenario), "--config", str(self.config)
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.proc.poll() is None:
            self.proc.proc.kill()
            self.proc.proc.wait(5)

    @property
    def addr(self) -> str:
        assert self.proc is not None
        return self.proc.addr

    def conditions(self) -> dict[str, Any]:
        with grpc.insecure_channel(self.addr) as ch:
            resp = diagnostics_pb2_grpc.DiagnosticsStub(ch).GetConditions(
                diagnostics_pb2.ConditionsRequest(), timeout=2
            )
        return {c.name: c for c in resp.conditions}

    def services(self) -> dict[str, int]:
        with grpc.insecure_channel(self.addr) as ch:
            resp = health_pb2_grpc.HealthStub(ch).List(health_pb2.HealthListRequest(), timeout=2)
        return {name: int(st.status) for name, st in resp.statuses.items()}

    def check(self, service: str) -> grpc.StatusCode | int:
        with grpc.insecure_channel(self.addr) as ch:
            try:
                resp = health_pb2_grpc.HealthStub(ch).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=2
                )
            except grpc.RpcError as exc:
                code: grpc.StatusCode = exc.code()
                return code
        return int(resp.status)

    def metrics(self) -> str:
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.proc.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Pod]:
    p = Pod(tmp_path)
    yield p
    p.stop()


def gpus(*uuids: str, **extra: dict[str, Any]) -> dict[str, Any]:
    return {"gpus": [{"index": i, "uuid": u, **extra.get(u, {})} for i, u in enumerate(uuids)]}




def test_gpu_leaving_the_inventory_takes_conditions_service_and_metrics(pod: Pod) -> None:
    """Two GPUs, then only the second: the first's conditions, `gpu/<uuid>` service (Check:
    NOT_FOUND, absent from List) and `uuid`-labelled series go; the second's stay."""
    pod.write(gpus(A, B))
    pod.start()
    wait_until(lambda: f"gpu/{A}/thermal" in pod.conditions() and f"gpu/{B}/thermal" in pod.conditions(), 10)
    assert f"gpu/{A}" in pod.services()
    assert f'uuid="{A}"' in pod.metrics()
    pod.write(gpus(B))
    wait_until(lambda: not any(n.startswith(f"gpu/{A}/") for n in pod.conditions()), 10)
    # positive witness: the remaining GPU is still sampled and reported
    assert f"gpu/{B}/thermal" in pod.conditions()
    assert f"gpu/{A}" not in pod.services() and f"gpu/{B}" in pod.services()
    assert pod.check(f"gpu/{A}") == grpc.StatusCode.NOT_FOUND
    text = pod.metrics()
    assert f'uuid="{A}"' not in text and f'uuid="{B}"' in text
    # the state series of its conditions go too (transition counters are history and stay)
    assert f'trt_health_condition_ok{{condition="gpu/{A}/' not in text
    assert f'trt_health_condition_ok{{condition="gpu/{B}/' in text


def test_phantom_default_gpu_goes_when_the_real_inventory_arrives(pod: Pod) -> None:
    """A scenario without `gpus:` has the default simulated GPU; once the file names another
    GPU, the default one leaves with its conditions and service."""
    pod.write({})
    pod.start()
    wait_until(lambda: f"gpu/{A}/thermal" in pod.conditions(), 10)
    pod.write({"gpus": [{"index": 0, "uuid": "GPU-x"}]})
    wait_until(lambda: "gpu/GPU-x/thermal" in pod.conditions(), 10)
    wait_until(lambda: not any(n.startswith(f"gpu/{A}/") for n in pod.conditions()), 10)
    assert f"gpu/{A}" not in pod.services()


def test_gpu_vanishing_with_a_fatal_latch_stays_reported(pod: Pod) -> None:
    """Xid 79 on the second GPU, then the GPU is no longer enumerated: vanishing is no evidence
    of a reset, so its Xid stays FATAL and readiness NOT_SERVING (its other signals go); after
    a restart that never enumerates it, still NOT_SERVING from the persisted latch."""
    pod.write(gpus(A, B))
    pod.start()
    wait_until(lambda: f"gpu/{B}/thermal" in pod.conditions(), 10)
    pod.write(gpus(A, B, **{B: {"xid": [79]}}))
    wait_until(lambda: pod.conditions().get(f"gpu/{B}/xid") is not None
               and pod.conditions()[f"gpu/{B}/xid"].reason == "XidFatal79", 10)
    pod.write(gpus(A))

    def reported_from_latches() -> bool:
        lost = pod.conditions().get(f"gpu/{B}/lost")
        return lost is not None and lost.reason == "GpuNotEnumerated"

    wait_until(reported_from_latches, 10)
    conds = pod.conditions()
    assert f"gpu/{B}/thermal" not in conds
    assert conds[f"gpu/{B}/xid"].reason == "XidFatal79"
    assert conds[f"gpu/{B}/lost"].reason == "GpuNotEnumerated"
    assert pod.check("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert pod.check(f"gpu/{B}") == health_pb2.HealthCheckResponse.NOT_SERVING
    assert pod.proc is not None and pod.proc.stop(signal.SIGTERM) == 0
    pod.start()
    wait_until(lambda: f"gpu/{B}/xid" in pod.conditions(), 10)
    assert pod.conditions()[f"gpu/{B}/xid"].reason == "XidFatal79"
    assert f"gpu/{A}/thermal" in pod.conditions()
    assert pod.check("readiness") == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_real_nvml_gpu_vanishing_is_latched_lost(tmp_path: Path) -> None:
    """Outside simulation a container's GPUs are fixed: one that is no longer enumerated (after
    an NVML re-open) fell off the bus, so it is latched GpuLost (FATAL, persisted), not removed."""
    scenario = ScenarioFile(tmp_path / "scenario.yaml", poll_interval_s=0.005)
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(gpus(A, B)))
    await scenario.start()
    backend = SimulatedBackend(scenario)
    sink = RecordingSink()
    comp = GpuComponent(
        fast_config(),
        simulate=False,  # the real-NVML rules, driven through a simulated backend
        scenario=None,
        registry=CollectorRegistry(),
        state_dir=tmp_path / "state",
        boot_id="boot-1",
        backend=backend,
    )
    try:
        await comp.start(sink)
        first = {r.name: r for r in await comp.refresh(submit=True)}
        assert first[f"gpu/{B}/lost"].ok
        backend.apply(gpus(A))
        after = {r.name: r for r in await comp.refresh(submit=True)}
        lost = after[f"gpu/{B}/lost"]
        assert lost.reason == "GpuLost" and lost.severity is Severity.FATAL and gating(lost)
        assert after[f"gpu/{A}/lost"].ok
        assert "GpuLost" in (tmp_path / "state" / "gpu-latches.json").read_text()
    finally:
        await comp.stop()
        await scenario.stop()


class _DropsAfterEnumeration(SimulatedBackend):
    """A simulated backend whose scenario drops the second GPU right after one enumeration."""

    armed = False

    def devices(self) -> list[Any]:
        infos = super().devices()
        if self.armed:
            self.armed = False
            self.apply(gpus(A))
        return infos


async def test_simulated_gpu_removed_mid_poll_is_not_latched_lost(tmp_path: Path) -> None:
    """The scenario drops a GPU between enumeration and its sample: it left the inventory (no
    GpuLost latch, nothing gating), and the remaining GPU is still sampled."""
    scenario = ScenarioFile(tmp_path / "scenario.yaml", poll_interval_s=0.005)
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump(gpus(A, B)))
    await scenario.start()
    backend = _DropsAfterEnumeration(scenario)
    comp = GpuComponent(
        fast_config(),
        simulate=True,
        scenario=None,
        registry=CollectorRegistry(),
        state_dir=tmp_path / "state",
        boot_id="boot-1",
        backend=backend,
    )
    try:
        await comp.start(RecordingSink())
        assert (await comp.refresh(submit=False))  # both GPUs sampled once
        backend.armed = True
        results = {r.name: r for r in await comp.refresh(submit=False)}
        assert not backend.armed  # the drop happened inside this poll
        assert results[f"gpu/{A}/lost"].ok
        assert not any(gating(r) for r in results.values()), [
            r for r in results.values() if gating(r)
        ]
        assert comp.gpu_uuids() == [A]
        assert "GpuLost" not in (tmp_path / "state" / "gpu-latches.json").read_text()
    finally:
        await comp.stop()
        await scenario.stop()
