"""Production engine file verification: no second copy of the engine in GPU memory needed.

For each configured engine, one polled check (:mod:`sidecar.engine.check`, the I/O edge)
verifies, in order: the manifest parses; the file is present and stable (not being written);
its size and SHA-256 match the manifest (hashing in a thread with its own deadline and rate
limits); the TensorRT plan tag and header version (advisory, see :mod:`sidecar.engine.plan`)
fit the runtime; the manifest's compute capability fits this GPU; the plan would fit in free
GPU memory (warning only). The rules live in :mod:`sidecar.engine.verify` (pure), the last-good
copy in :mod:`sidecar.engine.keep`, the metrics in :mod:`sidecar.engine.metrics`.

Changes on the volume are seen by a watcher (inotify, or stat polling on NFS / FUSE) and
re-verified at once. Until the first successful verification every condition gates
``readiness``; afterwards, by default, only ``engine/<name>``: the running server holds its
engine in memory, so a file replaced on the volume is reported loudly (log, metric,
``engine/<name>``) without pulling a pod whose canary and workload probe still pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.config import ConfigError
from sidecar.core.protocols import Check, Clock, ResultSink
from sidecar.core.values import CheckResult
from sidecar.engine.check import CheckWiring, EngineFileCheck
from sidecar.engine.config import EnginesConfig, parse_engines_config
from sidecar.engine.files import stat_stamp
from sidecar.engine.keep import LastGoodKeep
from sidecar.engine.manifest import read_manifest
from sidecar.engine.metrics import EngineMetrics
from sidecar.engine.verify import CONDITIONS, EngineVerification
from sidecar.runtime.watch import FileWatcher, choose_watcher

log = logging.getLogger(__name__)

__all__ = ["CONDITIONS", "EngineComponent", "EngineFileCheck", "parse_engines_config"]

Provider = Callable[[], Any]


def _abs(p: Path) -> Path:
    """The key watchers and events use for a path (absolute, normalised, links kept)."""
    return Path(os.path.abspath(p))


def _call(provider: Provider | None) -> Any:
    if provider is None:
        return None
    try:
        return provider()
    except Exception:
        log.exception("engine check provider failed")
        return None


class EngineComponent:
    """Verifies production engine files. Wire with :func:`parse_engines_config`.

    ``gpu_compute_capability`` returns this GPU's compute capability (``"9.0"``) or None;
    ``gpu_free_memory_bytes`` (or ``gpu_free_memory_mib``) the free memory of the GPU the engine
    would load on, or None;
    ``runtime_tensorrt_version`` the canary worker's TensorRT version, or None (config
    ``tensorrt_version`` takes precedence: it names the main server's runtime).
    ``clock`` is the monotonic clock of every interval the rules measure.

    ``keep`` is the :class:`~sidecar.engine.keep.LastGoodKeep` (None without
    ``last_good_dir``): ``keep.last_good(name)`` says which engine is the last good one of
    ``name`` and where it lies (call it on a thread: it stats the kept file).
    """

    name = "engines"

    def __init__(
        self,
        config: EnginesConfig,
        *,
        registry: CollectorRegistry,
        gpu_compute_capability: Callable[[], str | None] | None = None,
        gpu_free_memory_bytes: Callable[[], int | None] | None = None,
        gpu_free_memory_mib: Callable[[], float | None] | None = None,
        runtime_tensorrt_version: Callable[[], str | None] | None = None,
        watcher_factory: Callable[[list[Path]], tuple[FileWatcher, str | None]] | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self._gpu_cc = gpu_compute_capability
        self._gpu_free = gpu_free_memory_bytes
        if self._gpu_free is None and gpu_free_memory_mib is not None:
            mib = gpu_free_memory_mib

            def _bytes() -> int | None:
                v = mib()
                return None if v is None else int(v * 2**20)

            self._gpu_free = _bytes
        self._runtime_version = runtime_tensorrt_version
        self._watcher_factory = watcher_factory
        self.metrics = EngineMetrics(registry)
        self.keep = LastGoodKeep(config.last_good_dir) if config.last_good_dir is not None else None
        wiring = CheckWiring(
            config=config,
            metrics=self.metrics,
            keep=self.keep,
            runtime_version=self._runtime,
            gpu_compute_capability=self._compute_capability,
            gpu_free_bytes=self._free_bytes,
            retrigger=self._retrigger,
            watched=self._watched,
        )
        self._states = [EngineVerification(spec, config, clock) for spec in config.engines]
        self._checks = [EngineFileCheck(v, wiring) for v in self._states]
        self._by_path: dict[Path, list[EngineVerification]] = {}
        self._sink: ResultSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: FileWatcher | None = None
        self._change_tasks: set[asyncio.Task[None]] = set()
        self.watch_mode: str | None = None
        self.watch_note: str | None = None

    # -- Component protocol -------------------------------------------------------------------

    def checks(self) -> Sequence[Check]:
        return list(self._checks)

    async def start(self, sink: ResultSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        first: list[CheckResult] = []
        for v in self._states:
            first.extend(v.loading())
        if first:
            sink.submit(first)
        paths = await asyncio.to_thread(self._watch_paths)  # parses manifests: off the loop
        if paths:
            await self._start_watcher(paths)
        for c in self._checks:
            sink.trigger(c.name)

    async def stop(self) -> None:
        for task in list(self._change_tasks):
            task.cancel()
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None

    # -- what the checks ask ------------------------------------------------------------------

    def _runtime(self) -> tuple[str | None, str]:
        if self.config.tensorrt_version:
            return self.config.tensorrt_version, "config"
        v = _call(self._runtime_version)
        return (str(v) if v else None), "canary-worker"

    def _compute_capability(self) -> str | None:
        gpu = self.config.compute_capability or _call(self._gpu_cc)
        return str(gpu) if gpu else None

    def _free_bytes(self) -> int | None:
        free = _call(self._gpu_free)
        return None if free is None else int(free)

    def _retrigger(self, check_name: str, delay: float) -> None:
        sink, loop = self._sink, self._loop
        if sink is None or loop is None:
            return
        loop.call_later(delay, sink.trigger, check_name)

    def _watched(self, path: Path) -> bool | None:
        """None without a watcher; else whether ``path`` is watched."""
        if self._watcher is None:
            return None
        return _abs(path) in self._by_path

    # -- watching ---------------------------------------------------------------------------

    def _watch_paths(self) -> list[Path]:
        self._by_path.clear()
        for v in self._states:
            for p in (v.spec.manifest, v.spec.file):
                if p is not None:
                    self._by_path.setdefault(_abs(p), []).append(v)
            if v.spec.manifest is not None:
                # The engine named inside the manifest: resolvable only once it parsed.
                path = self._engine_path(v)
                if path is not None:
                    self._by_path.setdefault(_abs(path), []).append(v)
        return list(self._by_path)

    def _engine_path(self, v: EngineVerification) -> Path | None:
        """Blocking (may parse the manifest): call on a thread."""
        if v.spec.file is not None:
            return v.spec.file
        if v.manifest is None and v.spec.manifest is not None:
            with contextlib.suppress(ConfigError, OSError):
                v.manifest = read_manifest(v.spec.manifest)
        return v.manifest.path if v.manifest is not None else None

    async def _start_watcher(self, paths: list[Path]) -> None:
        # choosing reads the file system type and arming inotify stats folders: off the loop
        if self._watcher_factory is not None:
            watcher, note = await asyncio.to_thread(self._watcher_factory, paths)
        else:
            watcher, note = await asyncio.to_thread(
                choose_watcher, self.config.watch, paths, self.config.poll_interval_s
            )
        self._watcher = watcher
        self.watch_mode = watcher.mode
        self.watch_note = note
        self.metrics.watch.labels(mode=watcher.mode).set(1)
        if note:
            log.warning("engine change detection: %s", note, extra={"watch": watcher.mode})
        else:
            log.info("engine change detection", extra={"watch": watcher.mode})
        await watcher.start(self._on_change_threadsafe)

    def _on_change_threadsafe(self, path: Path) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._on_change, path)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def _on_change(self, path: Path) -> None:
        """A watched path may have changed: report what is obvious now, re-verify at once.
        What needs a file (a manifest not parsed yet names the engine; under inotify, whether
        the engine was deleted) is looked at on a thread first, never on the loop: a huge
        manifest took seconds to parse."""
        states = self._by_path.get(_abs(path), [])
        task = asyncio.ensure_future(self._on_change_looked(path, states))
        self._change_tasks.add(task)
        task.add_done_callback(self._change_tasks.discard)

    async def _on_change_looked(self, path: Path, states: list[EngineVerification]) -> None:
        engine_paths: dict[int, Path | None] = {}
        for v in states:
            if v.path is None and v.manifest is None and v.spec.manifest is not None:
                engine_paths[id(v)] = await asyncio.to_thread(self._engine_path, v)
            else:
                engine_paths[id(v)] = v.path or (v.manifest.path if v.manifest else None)
        gone: set[int] = set()
        if self.watch_mode == "inotify":  # on polled (network) volumes the check finds it
            targets = {id(v): engine_paths[id(v)] for v in states}

            def missing() -> set[int]:
                return {k for k, p in targets.items() if p is not None and stat_stamp(p) is None}

            gone = await asyncio.to_thread(missing)
        self._report_change(path, states, engine_paths, gone)

    def _report_change(
        self,
        path: Path,
        states: list[EngineVerification],
        engine_paths: dict[int, Path | None],
        gone: set[int],
    ) -> None:
        sink = self._sink
        for v in states:
            v.changed()
            self.metrics.changes.labels(engine=v.name).inc()
            engine_path = engine_paths.get(id(v))
            deleted = id(v) in gone
            level = logging.WARNING if v.verified_once else logging.INFO
            log.log(
                level,
                "engine file changed on the volume; re-verifying",
                extra={"engine": v.name, "path": str(path), "deleted": deleted},
            )
            if sink is not None:
                results = v.change_seen(path, engine_path if deleted else None)
                if results:
                    sink.submit(results)
                sink.trigger(f"engine-file/{v.name}")

    # -- introspection (diagnostics, tests, rollback) --------------------------------------------

    def last_good_path(self, name: str) -> Path | None:
        """The kept copy of the last verified engine file, when ``last_good_dir`` is set and
        it is still the file kept. Blocking (one stat): not for the event loop."""
        kept = self.keep.last_good(name) if self.keep is not None else None
        return kept.path if kept is not None else None

    def verified(self, name: str) -> bool:
        """True once the named engine passed every check at least once."""
        return any(v.verified_once for v in self._states if v.spec.name == name)
