"""Engine files on disk and an EngineComponent driven like the scheduler, for the engine tests."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.core.values import CheckResult
from sidecar.engine.component import EngineComponent
from sidecar.engine.config import EnginesConfig, EngineSpec
from sidecar.engine.manifest import EngineManifest, TensorSpec, dump_manifest
from sidecar.engine.plan import make_plan_header

PLAN_VERSION = (10, 13, 0, 35)


def plan_bytes(seed: int = 0, size: int = 256 * 1024, version: tuple[int, ...] = PLAN_VERSION) -> bytes:
    body = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    return make_plan_header(tuple(version))[:28] + body[: size - 28]  # type: ignore[arg-type]


def write_engine(folder: Path, data: bytes, **manifest: Any) -> Path:
    """Write model.plan and its manifest (sha and size of ``data``); returns the manifest path."""
    (folder / "model.plan").write_bytes(data)
    fields: dict[str, Any] = {
        "name": "prod",
        "file": "model.plan",
        "directory": folder,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "tensorrt_version": "10.13.0.35",
        "compute_capability": "9.0",
        "inputs": (TensorSpec("x", "float32", (1, 16)),),
    }
    fields.update(manifest)
    path = folder / "model.plan.manifest.yaml"
    dump_manifest(EngineManifest(**fields), path)
    return path


class Sink:
    """Records submitted results and runs triggered checks (single-flight), like the scheduler."""

    def __init__(self, comp: EngineComponent) -> None:
        self.comp = comp
        self.loop = asyncio.get_running_loop()
        self.log: list[tuple[float, CheckResult]] = []
        self._running: set[str] = set()
        self._pending: set[str] = set()
        self.tasks: list[asyncio.Task[None]] = []

    def submit(self, results: Iterable[CheckResult]) -> None:
        now = time.monotonic()
        self.log.extend((now, r) for r in results)

    def trigger(self, check_name: str) -> None:
        self.loop.call_soon_threadsafe(self._start, check_name)

    def _start(self, name: str) -> None:
        if name in self._running:
            self._pending.add(name)
            return
        self._running.add(name)
        self.tasks.append(asyncio.ensure_future(self._run(name)))

    async def _run(self, name: str) -> None:
        try:
            while True:
                check = next(c for c in self.comp.checks() if c.name == name)
                self.submit(await check.run())
                if name not in self._pending:
                    break
                self._pending.discard(name)
        finally:
            self._running.discard(name)

    def latest(self, cond: str) -> CheckResult | None:
        for _, r in reversed(self.log):
            if r.name == cond:
                return r
        return None

    async def wait_for(
        self, pred: Callable[[CheckResult], bool], within: float = 5.0, after: float = 0.0
    ) -> tuple[float, CheckResult]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for t, r in self.log:
                if t >= after and pred(r):
                    return t, r
            await asyncio.sleep(0.005)
        raise AssertionError(
            "no matching result; latest: " + "; ".join(f"{r.name}={r.reason}" for _, r in self.log[-8:])
        )


def config(*specs: EngineSpec, **kw: Any) -> EnginesConfig:
    base: dict[str, Any] = {
        "engines": specs,
        "stable_window_s": 0.05,
        "hash_min_interval_s": 0.0,
        "check_interval_s": 3600.0,
        "poll_interval_s": 0.25,
    }
    base.update(kw)
    return EnginesConfig(**base)


async def started(cfg: EnginesConfig, **kw: Any) -> tuple[EngineComponent, Sink]:
    comp = EngineComponent(cfg, registry=CollectorRegistry(), **kw)
    sink = Sink(comp)
    await comp.start(sink)
    return comp, sink


def is_(cond: str, reason: str | None = None, ok: bool | None = None) -> Callable[[CheckResult], bool]:
    def pred(r: CheckResult) -> bool:
        return (
            r.name == f"engine/prod/{cond}"
            and (reason is None or r.reason == reason)
            and (ok is None or r.ok is ok)
        )

    return pred
