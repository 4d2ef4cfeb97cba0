"""The canary's goldens are read off the event loop and not on every round: the canary's
own once per runner, the production engine's again only when one of its files changed."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sidecar.canary import golden_store
from sidecar.canary.golden_store import CanaryGoldens, ProductionGoldens
from sidecar.core.errors import SidecarError
from sidecar.engine.manifest import EngineManifest
from sidecar.testing.canary import ENGINES


def _write_manifest(directory: Path, *, name: str = "prod", extra: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {
        "name": name,
        "file": "prod.plan",
        "format": "tensorrt-plan",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [2]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [2]}],
        "golden": {"inputs": {"x": "in.npy"}, "outputs": {"y": "out.npy"}},
        "tolerance": {"atol": 0.0, "rtol": 0.0},
        **(extra or {}),
    }
    path = directory / "prod.manifest.yaml"
    tmp = directory / ".prod.tmp"
    tmp.write_text(yaml.safe_dump(doc))
    os.replace(tmp, path)
    return path


def _write_npy(path: Path, values: list[float]) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    np.save(tmp, np.array(values, np.float32))
    os.replace(tmp, path)


def _break(path: Path) -> None:
    path.write_text("name: [unclosed\n")


@pytest.fixture
def prod(tmp_path: Path) -> Path:
    _write_npy(tmp_path / "in.npy", [1.0, 2.0])
    _write_npy(tmp_path / "out.npy", [3.0, 4.0])
    return _write_manifest(tmp_path)


async def test_production_goldens_are_kept_while_their_files_are_unchanged(prod: Path) -> None:
    """Rounds without a file change parse nothing; a new golden output or a new manifest is
    read on the next round."""
    store = ProductionGoldens(prod)
    first = await store.get()
    again = await store.get()
    assert store.reads == 1 and again is first
    assert first.outputs()["y"].tolist() == [3.0, 4.0]
    _write_npy(prod.parent / "out.npy", [5.0, 6.0])
    changed = await store.get()
    assert store.reads == 2 and changed.outputs()["y"].tolist() == [5.0, 6.0]
    _write_manifest(prod.parent, extra={"tolerance": {"atol": 0.5, "rtol": 0.0}})
    retuned = await store.get()
    assert store.reads == 3 and retuned.manifest.tolerance.atol == 0.5
    await store.get()
    assert store.reads == 3


async def test_a_bad_production_manifest_is_reported_every_round_until_fixed(prod: Path) -> None:
    """A manifest that does not parse raises on every round (nothing kept); once fixed it is
    read again."""
    store = ProductionGoldens(prod)
    await store.get()
    _break(prod)
    for _ in range(2):
        with pytest.raises(SidecarError):
            await store.get()
    _write_manifest(prod.parent)
    assert (await store.get()).manifest.name == "prod"


async def test_an_unreadable_production_golden_is_raised_where_it_is_compared(prod: Path) -> None:
    """A manifest that parses with a missing golden output: the manifest is usable (its
    name), the outputs raise the read error, and the next round tries the files again."""
    (prod.parent / "out.npy").unlink()
    store = ProductionGoldens(prod)
    found = await store.get()
    assert found.manifest.name == "prod"
    with pytest.raises(OSError):
        found.outputs()
    _write_npy(prod.parent / "out.npy", [3.0, 4.0])
    assert (await store.get()).outputs()["y"].tolist() == [3.0, 4.0] and store.reads == 2


async def test_goldens_are_read_off_the_event_loop(prod: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both stores parse their manifests in a worker thread, never on the loop's thread."""
    threads: list[int] = []
    real = golden_store.load_manifest

    def recording(path: Path) -> EngineManifest:
        threads.append(threading.get_ident())
        return real(path)

    monkeypatch.setattr(golden_store, "load_manifest", recording)
    await ProductionGoldens(prod).get()
    await CanaryGoldens(ENGINES / "canary" / "manifest.yaml", prod).get("onnxruntime")
    assert len(threads) == 2 and threading.get_ident() not in threads


async def test_canary_golden_read_once_per_runner_and_a_failure_is_not_kept(tmp_path: Path) -> None:
    """The canary's own golden is read on its runner's first round and then kept; a missing
    manifest raises (GoldenFileUnreadable upstream) and is tried again on the next round."""
    missing = tmp_path / "canary.yaml"
    goldens = CanaryGoldens(missing, missing)
    with pytest.raises(OSError):
        await goldens.get("onnxruntime")
    kernel = await goldens.get("cuda-kernel")  # computed: no file at all
    assert kernel.input_sha256 == golden_store.KERNEL_INPUT_ID and await goldens.get("cuda-kernel") is kernel
    onnx = CanaryGoldens(ENGINES / "canary" / "manifest.yaml", missing)
    first = await onnx.get("onnxruntime")
    assert await onnx.get("onnxruntime") is first and first.budget_ms == 50.0
