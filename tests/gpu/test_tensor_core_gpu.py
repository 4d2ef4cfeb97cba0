"""The tensor-core SDC canary on a real GPU (marker ``gpu``; run on the GPU machine with ``-s``).

    python3 -m pytest -m gpu tests/gpu/test_tensor_core_gpu.py -s

Proves: the NVRTC int8/bf16 ``mma.sync`` kernel builds and loads; every round covers every SM
(extra launches when the scheduler skipped one) and matches the CPU int64 golden bit for bit;
the lane-level numpy model of the kernel gives the very bits the GPU gives (so the CI model is
the kernel's model); an injected bit flip is detected and attributed to its SM, bit and path;
injection is refused without the environment switch. The full figures come from
``python3 -m bench.sdc``.
"""

from __future__ import annotations

import asyncio
import ctypes.util
import importlib.util
import random
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from sidecar.canary import sdc
from sidecar.canary.component import CanaryComponent
from sidecar.canary.config import CanaryConfig, TensorCoreConfig
from sidecar.canary.sdc_screen import STATE_FILE
from sidecar.canary.worker.runners.base import RunnerError
from sidecar.canary.worker.runners.tensor_core import INJECTION_ENV, TensorCoreRunner
from sidecar.canary.worker.sdc_model import simulate_launch
from sidecar.core.values import CheckResult, Severity
from sidecar.runtime.scenario import ScenarioFile

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-bindings not installed"),
    pytest.mark.skipif(
        not (Path("/dev/nvidiactl").exists() or ctypes.util.find_library("cuda")),
        reason="no NVIDIA driver on this machine",
    ),
]


ENGINES = Path(__file__).resolve().parents[2] / "engines"


@pytest.fixture(scope="module")
def runner() -> Iterator[TensorCoreRunner]:
    mp = pytest.MonkeyPatch()
    mp.setenv(INJECTION_ENV, "1")
    r = TensorCoreRunner((0,), allow_injection=True)
    print(r.load().detail)
    yield r
    r.close()
    mp.undo()


def test_every_round_covers_every_sm_and_is_bit_exact(runner: TensorCoreRunner) -> None:
    """200 rounds: coverage == SM count every round, no element differs from the golden."""
    sms = runner.devs[0].sms
    first: list[int] = []
    for _ in range(200):
        out = runner.infer()
        (v,) = sdc.judge_round(out)
        assert v.problem == ""
        assert v.mismatch_count == 0, v.describe()
        assert v.covered == sms, f"round covered {v.covered}/{sms} SMs, missing {v.missing_sms}"
        first.append(len(np.unique(out[f"{sdc.OUT_SMID}@0"][0])))
    print(
        f"SMs {sms}; first-launch coverage min {min(first)}, device round trip "
        f"{runner.last_device_s * 1e6:.1f} us (last round)"
    )


def test_lane_model_matches_the_gpu_bit_for_bit(runner: TensorCoreRunner) -> None:
    """The CI model (per-lane fragments, PTX layouts) reproduces the kernel's exact bits."""
    out = runner.infer()
    meta = sdc.RoundMeta.from_array(out[f"{sdc.OUT_META}@0"])
    inp = sdc.launch_inputs(meta.base_seed, meta.round_no, 0, meta.blocks)
    few = sdc.LaunchInputs(inp.a8[:4], inp.bt8[:4], inp.a16[:4], inp.bt16[:4])
    smid = out[f"{sdc.OUT_SMID}@0"][0][:4]
    c8, c16, _ = simulate_launch(few, smid)
    assert (out[f"{sdc.OUT_I8}@0"][0][:4] == c8).all()
    assert (out[f"{sdc.OUT_BF16}@0"][0][:4] == c16).all()


def test_injected_flips_are_detected_and_attributed(runner: TensorCoreRunner) -> None:
    """40 injections over random SMs, bits and paths: each found on its SM with its xor mask."""
    rnd = random.Random(12)
    ids = sorted(int(x) for x in np.unique(runner.infer()[f"{sdc.OUT_SMID}@0"]))  # may have gaps
    print(f"%smid values: {len(ids)} distinct, min {ids[0]}, max {ids[-1]}")
    for _ in range(40):
        inj = sdc.Injection(rnd.choice(ids), rnd.randrange(32), rnd.choice(sdc.PATHS))
        (v,) = sdc.judge_round(runner.infer(gpu_fault=inj.text()))
        assert v.corrupt, inj
        assert v.bad_sms == [inj.sm], v.describe()
        assert all(m.xor == 1 << inj.bit and m.path == inj.path for m in v.mismatches), v.describe()
        assert v.uuid.startswith("GPU-")


def test_injection_is_refused_without_the_environment_switch(
    runner: TensorCoreRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(INJECTION_ENV)
    with pytest.raises(RunnerError) as err:
        runner.infer(gpu_fault="sdc_flip:0:0")
    assert err.value.reason == "FaultInjectionRefused"


class _Sink:
    def submit(self, results: Iterable[CheckResult]) -> None:
        pass

    def trigger(self, check_name: str) -> None:
        pass


async def _until(comp: CanaryComponent, reason: str, within: float = 60.0) -> CheckResult:
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        last = next(r for r in await comp.run_canary() if r.name == "canary")
        if last.reason == reason:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{reason} not reached; last {last}")


async def test_worker_screens_every_sm_then_an_injected_flip_is_fatal_and_persisted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real worker process on the GPU: CanaryPassed with n/n SMs, then a flip on
    SM 0 is FATAL SilentDataCorruption naming SM 0 and the bit, written to the state file."""
    monkeypatch.setenv(INJECTION_ENV, "1")
    (tmp_path / "scenario.yaml").write_text(yaml.safe_dump({"canary": {"gpu_fault": "none"}}))
    sf = ScenarioFile(tmp_path / "scenario.yaml")
    sf.reload()
    reg = CollectorRegistry()
    cfg = CanaryConfig(
        runner="tensor-core",
        timeout_s=5.0,
        first_timeout_s=60.0,
        backoff_initial_s=0.2,
        backoff_max_s=1.0,
        tensor_core=TensorCoreConfig(allow_fault_injection=True),
    )
    comp = CanaryComponent(
        cfg,
        simulate=True,
        scenario=sf,
        registry=reg,
        gpu_state=None,
        engines_dir=ENGINES,
        state_dir=tmp_path / "state",
    )
    await comp.start(_Sink())
    try:
        ok = await _until(comp, "CanaryPassed")
        print(f"\n[gpu] tensor-core canary: {ok.message}")
        lat = []
        for _ in range(20):
            main = next(r for r in await comp.run_canary() if r.name == "canary")
            assert main.reason == "CanaryPassed", main
            lat.append(float(main.value or 0))
        uuid = ok.message.split(" on ", 1)[1].split(" ", 1)[0]
        sms = reg.get_sample_value("trt_health_sdc_sms", {"gpu": uuid})
        assert sms and reg.get_sample_value("trt_health_sdc_sms_covered", {"gpu": uuid}) == sms
        round_us = reg.get_sample_value("trt_health_sdc_round_microseconds", {"gpu": uuid})
        per_hour = reg.get_sample_value("trt_health_sdc_sm_seconds_screened_per_hour", {"gpu": uuid})
        print(
            f"[gpu] worker round p50 {sorted(lat)[len(lat) // 2] * 1e3:.2f} ms; device round trip "
            f"{round_us:.0f} us; SM-seconds screened per hour {per_hour:.3f}"
        )
        (tmp_path / "scenario.yaml").write_text(
            yaml.safe_dump({"canary": {"gpu_fault": "sdc_flip:0:12:int8"}})
        )
        sf.reload()
        bad = await _until(comp, "SilentDataCorruption")
        assert bad.severity is Severity.FATAL
        assert "SM(s) 0" in bad.message and "xor 0x00001000" in bad.message and uuid in bad.message
        assert "SilentDataCorruption" in (tmp_path / "state" / STATE_FILE).read_text()
        print(f"[gpu] finding: {bad.message[:300]}")
    finally:
        await comp.stop()
