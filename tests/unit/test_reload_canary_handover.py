"""Make-before-break for the canary: what the old component found moves to its replacement
(which read the SDC state file when it was built, before the old one's last findings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar.canary import sdc
from sidecar.canary.component import CanaryComponent
from sidecar.canary.config import CanaryConfig
from sidecar.canary.sdc_screen import SdcScreen
from sidecar.canary.worker.runners.tensor_core import SimulatedTensorCoreDevice, TensorCoreRunner
from sidecar.testing.canary import ENGINES, FAST, main


def _uuid(ordinal: int) -> str:
    return SimulatedTensorCoreDevice(ordinal, 16).uuid


async def _find_sdc(screen: SdcScreen, ordinal: int) -> None:
    """A corrupt tensor-core round on one GPU, judged and persisted by ``screen``."""
    runner = TensorCoreRunner(
        simulated=(SimulatedTensorCoreDevice(ordinal, 16),), allow_injection=True, base_seed=7 + ordinal
    )
    runner.load()
    judged = await screen.judge(runner.infer(gpu_fault="sdc_flip:3:1"))
    assert [v.uuid for v in judged.corrupt] == [_uuid(ordinal)]
    await screen.latch(judged)


def _persisted(state: Path) -> str:
    found = SdcScreen(CollectorRegistry(), interval_s=5.0, state_dir=state).persisted()
    return "" if found is None else found[0]


def _screen(state: Path) -> SdcScreen:
    return SdcScreen(CollectorRegistry(), interval_s=5.0, state_dir=state)


async def test_sdc_latches_the_old_screen_persisted_during_the_overlap_stay_in_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sdc.INJECTION_ENV, "1")
    old = _screen(tmp_path)
    new = _screen(tmp_path)  # the replacement read the file: no finding yet
    await _find_sdc(old, 0)  # the old one found one while the replacement was staged
    assert _uuid(0) in _persisted(tmp_path)  # witness: persisted by the old one
    await new.take_over(old)
    await _find_sdc(new, 1)  # the replacement's own finding rewrites the file whole
    assert _uuid(0) in _persisted(tmp_path) and _uuid(1) in _persisted(tmp_path)


def _component(state: Path) -> CanaryComponent:
    return CanaryComponent(
        CanaryConfig(**FAST),
        simulate=False,
        scenario=None,
        registry=CollectorRegistry(),
        gpu_state=None,
        engines_dir=ENGINES,
        state_dir=state,
    )


async def test_an_sdc_finding_of_the_old_canary_moves_to_the_replacement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(sdc.INJECTION_ENV, "1")
    new = _component(tmp_path)  # built at the reload: the state file holds no finding yet
    await _find_sdc(_screen(tmp_path), 0)  # the old component's finding while new was staged ...
    old = _component(tmp_path)  # ... which it holds (as one restored from the file)
    assert main(await old.run_canary()).reason == "SilentDataCorruption"  # witness
    await new.take_over_latches(old)
    result = main(await new.run_canary())
    assert result.reason == "SilentDataCorruption" and _uuid(0) in result.message
