"""Several production engines in one real canary worker (ONNX Runtime on CPU): a primary run
every round and a fallback verified in advance and released; the released one's pass stands
until its files change, and then it is loaded again and verified again."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sidecar.canary.component import CanaryComponent
from sidecar.canary.config import ProductionEngineConfig
from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.testing.canary import Sink, main, make, onnx_engine, reason, until

PRIMARY = "canary/engine/prim"
FALLBACK = "canary/engine/fb"


def _by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


async def _rounds_until(
    comp: CanaryComponent, name: str, pred: Callable[[CheckResult], bool], rounds: int = 60
) -> dict[str, CheckResult]:
    """Run canary rounds until condition ``name`` satisfies ``pred`` (the results of that round)."""
    seen: list[str] = []
    for _ in range(rounds):
        got = _by_name(await comp.run_canary())
        r = got.get(name)
        if r is not None:
            seen.append(r.reason)
            if pred(r):
                return got
    raise AssertionError(f"{name} never matched; reasons seen: {seen}")


def _replace_npy(path: Path, values: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, values)
    os.replace(tmp, path)


async def test_primary_and_released_fallback_both_have_their_own_canary(tmp_path: Path) -> None:
    """Both engines load in the one worker; each gets canary/engine/<name> CanaryPassed (and
    gates engine/<name>); the fallback is then released (not loaded by a restarted worker
    either) and keeps reporting VerifiedAndReleased (OK) round after round, while the primary
    is compared every round."""
    prim = onnx_engine(tmp_path / "prim", "prim")
    fb = onnx_engine(tmp_path / "fb", "fb")
    comp, _, _ = make(
        tmp_path,
        production_engines=(
            ProductionEngineConfig(prim, 64.0),
            ProductionEngineConfig(fb, 64.0, release_after_verify=True),
        ),
    )
    await comp.start(Sink())
    try:
        first = _by_name(await until(comp, reason("CanaryPassed")))
        assert first[PRIMARY].reason == "CanaryPassed" and "engine/prim" in first[PRIMARY].gates
        assert first[FALLBACK].reason == "CanaryPassed" and "engine/fb" in first[FALLBACK].gates
        assert [s.manifest for s in comp.supervisor.load_request.engines()] == [str(prim.resolve())]
        for _ in range(3):
            got = _by_name(await comp.run_canary())
            assert main(list(got.values())).reason == "CanaryPassed"
            assert (got[PRIMARY].reason, got[FALLBACK].reason) == ("CanaryPassed", "VerifiedAndReleased")
            assert got[FALLBACK].status is CheckStatus.OK
        # a worker restart: the fallback stays released (its pass of unchanged files stands)
        await comp.supervisor.replace("test", "WorkerReplaced", "replaced by the test")
        got = _by_name(await until(comp, reason("CanaryPassed")))
        assert (got[PRIMARY].reason, got[FALLBACK].reason) == ("CanaryPassed", "VerifiedAndReleased")
    finally:
        await comp.stop()


async def test_released_engine_is_verified_again_when_its_files_change(tmp_path: Path) -> None:
    """A new golden file (same values): EngineChanged (UNKNOWN, not a stale pass), loaded
    into the running worker again, passed, released again. A golden that no longer matches:
    the reloaded engine fails its canary (FATAL mismatch). A broken engine file: its load
    fails and is reported until the files change again."""
    fb = onnx_engine(tmp_path / "fb", "fb")
    comp, _, _ = make(
        tmp_path, production_engines=(ProductionEngineConfig(fb, 64.0, release_after_verify=True),)
    )
    golden = tmp_path / "fb" / "golden_output.npy"
    expected = np.load(golden)
    await comp.start(Sink())
    try:
        await until(comp, reason("CanaryPassed"))
        await _rounds_until(comp, FALLBACK, reason("VerifiedAndReleased"))
        pid = comp.supervisor.pid
        _replace_npy(golden, expected)
        changed = (await _rounds_until(comp, FALLBACK, lambda r: r.reason != "VerifiedAndReleased"))[FALLBACK]
        assert (changed.status, changed.reason) == (CheckStatus.UNKNOWN, "EngineChanged")
        assert [s.manifest for s in comp.supervisor.load_request.engines()] == [str(fb.resolve())]
        passed = (await _rounds_until(comp, FALLBACK, lambda r: r.reason != "EngineChanged"))[FALLBACK]
        assert passed.reason == "CanaryPassed"
        assert _by_name(await comp.run_canary())[FALLBACK].reason == "VerifiedAndReleased"
        assert comp.supervisor.pid == pid  # verified again in the same worker
        assert comp.supervisor.load_request.engines() == ()

        _replace_npy(golden, expected + 1.0)
        await _rounds_until(comp, FALLBACK, reason("EngineChanged"))
        wrong = (await _rounds_until(comp, FALLBACK, lambda r: r.reason != "EngineChanged"))[FALLBACK]
        assert (wrong.reason, wrong.severity) == ("CanaryMismatch", Severity.FATAL)
    finally:
        await comp.stop()


async def test_released_engine_whose_new_file_cannot_load_reports_it(tmp_path: Path) -> None:
    fb = onnx_engine(tmp_path / "fb", "fb")
    comp, _, _ = make(
        tmp_path, production_engines=(ProductionEngineConfig(fb, 64.0, release_after_verify=True),)
    )
    await comp.start(Sink())
    try:
        await until(comp, reason("CanaryPassed"))
        await _rounds_until(comp, FALLBACK, reason("VerifiedAndReleased"))
        model = tmp_path / "fb" / "canary.onnx"
        good = model.read_bytes()
        model.write_bytes(b"not an onnx model")
        failed = (await _rounds_until(comp, FALLBACK, reason("EngineLoadFailed")))[FALLBACK]
        assert failed.status is CheckStatus.FAIL and "could not be loaded again" in failed.message
        got = _by_name(await comp.run_canary())
        assert got[FALLBACK].reason == "EngineLoadFailed"  # held while the files stay so
        assert main(list(got.values())).reason == "CanaryPassed"  # the canary itself is unharmed
        model.write_bytes(good)
        await _rounds_until(comp, FALLBACK, reason("VerifiedAndReleased"))
    finally:
        await comp.stop()
