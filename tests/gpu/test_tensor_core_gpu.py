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

import ctypes.util
import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from sidecar.canary import sdc
from sidecar.canary.runners.base import RunnerError
from sidecar.canary.runners.tensor_core import INJECTION_ENV, TensorCoreRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="cuda-bindings not installed"),
    pytest.mark.skipif(
        not (Path("/dev/nvidiactl").exists() or ctypes.util.find_library("cuda")),
        reason="no NVIDIA driver on this machine",
    ),
]


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
    c8, c16, _ = sdc.simulate_launch(few, smid)
    assert (out[f"{sdc.OUT_I8}@0"][0][:4] == c8).all()
    assert (out[f"{sdc.OUT_BF16}@0"][0][:4] == c16).all()


def test_injected_flips_are_detected_and_attributed(runner: TensorCoreRunner) -> None:
    """40 injections over random SMs, bits and paths: each found on its SM with its xor mask."""
    rnd = random.Random(12)
    sms = runner.devs[0].sms
    for _ in range(40):
        inj = sdc.Injection(rnd.randrange(sms), rnd.randrange(32), rnd.choice(sdc.PATHS))
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
