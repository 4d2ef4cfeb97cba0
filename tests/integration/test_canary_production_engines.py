"""Several production engines in one real canary worker (ONNX Runtime on CPU): a primary run
every round and a fallback verified in advance and released; the released one's pass stands
until its files change, and then it is loaded again and verified again."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sidecar.canary import protocol
from sidecar.canary.component import CanaryComponent
from sidecar.canary.config import ProductionEngineConfig
from sidecar.canary.worker.main import Worker
from sidecar.core.values import CheckResult, CheckStatus, Severity
from sidecar.testing.canary import ENGINES, Sink, main, make, onnx_engine, reason, until

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


def test_worker_protocol_several_engines_and_the_one_engine_form(tmp_path: Path) -> None:
    """The worker (in this process, ONNX Runtime): a load in the one-engine form
    (``production``) and one more engine by ``load_engine``; a run answers each by manifest
    path; ``release`` of one manifest drops only it, ``release`` without one drops all."""
    a = str(onnx_engine(tmp_path / "a", "a"))
    b = str(onnx_engine(tmp_path / "b", "b"))
    out = io.BytesIO()
    worker = Worker(out, allow_faults=False)

    def ask(msg: dict[str, object]) -> dict[str, object]:
        start = out.tell()
        assert worker.handle(msg)
        out.seek(start)
        reply = protocol.loads(out.readline())
        out.seek(0, io.SEEK_END)
        return reply

    load = {"op": "load", "runner": "onnxruntime", "manifest": str(ENGINES / "canary" / "manifest.yaml")}
    assert ask({**load, "production": {"manifest": a, "memory_budget_mib": 64}})["ok"]
    assert ask({"op": "load_engine", "production": {"manifest": b, "memory_budget_mib": 64}})["ok"]
    bad = ask({"op": "load_engine", "production": {"manifest": str(tmp_path / "none.yaml")}})
    assert not bad["ok"] and bad["error"]["reason"] == "EngineMissing"  # type: ignore[index]
    run = ask({"op": "run", "id": 1})
    outputs = run["engine_outputs"]
    assert isinstance(outputs, dict) and sorted(outputs) == [a, b]
    golden = np.load(tmp_path / "a" / "golden_output.npy")
    assert np.allclose(protocol.decode_arrays(outputs[a])["y"], golden, atol=1e-5)
    assert ask({"op": "release", "manifest": a})["ok"]
    assert sorted(ask({"op": "run", "id": 2})["engine_outputs"]) == [b]  # type: ignore[arg-type]
    assert ask({"op": "release"})["ok"]
    assert "engine_outputs" not in ask({"op": "run", "id": 3})
