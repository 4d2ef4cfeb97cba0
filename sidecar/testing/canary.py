"""A CanaryComponent on the bundled engines with fast settings, and its fakes, for the canary worker tests."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from sidecar.canary.component import CanaryComponent
from sidecar.canary.config import CanaryConfig
from sidecar.core.values import CheckResult
from sidecar.runtime.scenario import ScenarioFile

ENGINES = Path(__file__).resolve().parents[2] / "engines"  # the repository's bundled canary engines


class Sink:
    """Records submitted results and triggers."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.triggers: list[str] = []

    def submit(self, results: Iterable[CheckResult]) -> None:
        self.results.extend(results)

    def trigger(self, check_name: str) -> None:
        self.triggers.append(check_name)


class GpuState:
    def __init__(self) -> None:
        self.exclusive = False
        self.is_busy = False
        self.generation = 0

        self.exclusive_calls = 0

    def exclusive_process(self) -> bool:
        self.exclusive_calls += 1
        return self.exclusive

    def busy(self) -> bool:
        return self.is_busy

    def reset_generation(self) -> int:
        return self.generation

    def gpu_fault(self) -> bool:
        return False


FAST: dict[str, Any] = dict(
    runner="onnxruntime",
    timeout_s=2.0,
    first_timeout_s=5.0,
    load_timeout_s=20.0,
    backoff_initial_s=0.05,
    backoff_max_s=0.2,
    warmup_runs=1,
)


def make(
    tmp_path: Path,
    *,
    simulate: bool = False,
    scenario: dict[str, Any] | None = None,
    gpu: GpuState | None = None,
    clock: Callable[[], float] = time.monotonic,
    state_dir: Path | None = None,
    **cfg: Any,
) -> tuple[CanaryComponent, ScenarioFile | None, CollectorRegistry]:
    sf: ScenarioFile | None = None
    if scenario is not None:
        path = tmp_path / "scenario.yaml"
        path.write_text(yaml.safe_dump(scenario))
        sf = ScenarioFile(path)
        sf.reload()
    reg = CollectorRegistry()
    config = CanaryConfig(**{**FAST, **cfg})
    comp = CanaryComponent(
        config,
        simulate=simulate,
        scenario=sf,
        registry=reg,
        gpu_state=gpu,
        engines_dir=ENGINES,
        clock=clock,
        state_dir=state_dir,
    )
    return comp, sf, reg


def set_scenario(sf: ScenarioFile, doc: dict[str, Any]) -> None:
    assert sf.path is not None
    tmp = sf.path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, sf.path)
    assert sf.reload()


def main(results: list[CheckResult]) -> CheckResult:
    return next(r for r in results if r.name == "canary")


async def until(
    comp: CanaryComponent, pred: Callable[[CheckResult], bool], within: float = 15.0
) -> list[CheckResult]:
    """Run the canary check until its main result satisfies pred."""
    deadline = time.monotonic() + within
    last: list[CheckResult] = []
    while time.monotonic() < deadline:
        last = await comp.run_canary()
        if pred(main(last)):
            return last
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not reached; last: {main(last) if last else None}")


def reason(name: str) -> Callable[[CheckResult], bool]:
    return lambda r: r.reason == name


def onnx_engine(folder: Path, name: str, **manifest: Any) -> Path:
    """A production engine that runs on CPU: a copy of the bundled ONNX canary model and its
    golden files under ``folder``, its manifest naming it ``name`` (``manifest`` overrides
    fields, e.g. ``version`` / ``fallback``). Returns the manifest path."""
    src = ENGINES / "canary"
    folder.mkdir(parents=True, exist_ok=True)
    for f in ("canary.onnx", "golden_input.npy", "golden_output.npy"):
        (folder / f).write_bytes((src / f).read_bytes())
    doc = yaml.safe_load((src / "manifest.yaml").read_text())
    doc.update({"name": name, **manifest})
    path = folder / f"{name}.manifest.yaml"
    tmp = folder / f".{name}.manifest.tmp"
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)
    return path
