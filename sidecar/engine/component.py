"""Production engine file verification: no second copy of the engine in GPU memory needed.

For each configured engine, one polled check verifies, in order: the manifest parses; the file
is present and stable (not being written); its size and SHA-256 match the manifest (hashing in
a thread with its own deadline and rate limits); the TensorRT plan tag and header version
(advisory, see :mod:`sidecar.engine.plan`) fit the runtime; the manifest's compute capability
fits this GPU; the plan would fit in free GPU memory (warning only).

Changes on the volume are seen by a watcher (inotify, or stat polling on NFS / FUSE) and
re-verified at once. Until the first successful verification every condition gates
``readiness``; afterwards, by default, only ``engine/<name>``: the running server holds its
engine in memory, so a file replaced on the volume is reported loudly (log, metric,
``engine/<name>``) without pulling a pod whose canary and workload probe still pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from sidecar.config import ConfigError
from sidecar.core.protocols import Check, ResultSink
from sidecar.core.values import SERVICE_READINESS, CheckResult, CheckStatus, Severity, engine_service
from sidecar.engine.config import EnginesConfig, EngineSpec, parse_engines_config
from sidecar.engine.files import (
    DANGLING,
    MISSING,
    FileStamp,
    HashResult,
    HashTimeout,
    observe_stability,
    path_problem,
    sha256_file,
    stat_stamp,
)
from sidecar.engine.manifest import EngineManifest, dump_manifest, load_manifest
from sidecar.engine.plan import PlanHeader, compare_versions, read_plan_header
from sidecar.engine.watch import FileWatcher, choose_watcher

log = logging.getLogger(__name__)

__all__ = ["EngineComponent", "EngineFileCheck", "parse_engines_config"]

# Condition suffixes under engine/<name>/.
CONDITIONS = ("manifest", "file", "checksum", "plan", "version", "arch", "memory", "change")
# Conditions whose success is required for "verified".
_REQUIRED = ("manifest", "file", "checksum", "plan", "version", "arch")

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


def check_compute_capability(built_for: str, gpu: str, hardware_compatibility: str) -> tuple[bool, str]:
    """Would a plan built for ``built_for`` run on a GPU of compute capability ``gpu``?"""

    def parse(cc: str) -> tuple[int, int]:
        major, _, minor = cc.partition(".")
        return int(major), int(minor or 0)

    try:
        b, g = parse(built_for), parse(gpu)
    except ValueError:
        return True, f"cannot compare compute capabilities {built_for!r} and {gpu!r}"
    if hardware_compatibility == "ampere+":
        if g >= (8, 0):
            return True, f"hardware-compatible (ampere+) plan runs on compute {gpu}"
        return False, f"ampere+ plan needs compute >= 8.0, this GPU is {gpu}"
    if b == g:
        return True, f"built for compute {built_for}, this GPU is {gpu}"
    return False, f"built for compute {built_for}, this GPU is compute {gpu}: rebuild the engine"


@dataclass
class _EngineState:
    spec: EngineSpec
    path: Path | None = None
    manifest: EngineManifest | None = None
    verified_once: bool = False
    baseline_sha: str | None = None
    baseline_stamp: FileStamp | None = None
    observed: FileStamp | None = None
    observed_at: float = 0.0
    hashed_stamp: FileStamp | None = None
    hash_result: HashResult | None = None
    hashed_at: float = -1e18
    hash_started_at: float = -1e18
    event_at: float | None = None
    header: PlanHeader | None = None
    kept_stamp: FileStamp | None = None


def _load_manifest(path: Path) -> EngineManifest:
    """``load_manifest`` whose every content fault is a ``ConfigError`` with a short message:
    a non-UTF-8 byte, a nest too deep for the parser or any other parse bug is a finding for
    that engine, never an exception that escapes into the component (or the event loop)."""
    problem = path_problem(path)
    if problem == MISSING:
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    if problem is not None:  # a FIFO would block the reader for ever; a folder is no manifest
        raise ConfigError([f"{path}: is {problem}, not a regular file"])
    try:
        return load_manifest(path)
    except (ConfigError, OSError):
        raise
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"]) from None
    except Exception as exc:
        raise ConfigError([f"{path}: cannot be parsed: {type(exc).__name__}: {str(exc)[:200]}"]) from None


class EngineFileCheck:
    """The polled (and event-triggered) verification of one engine."""

    def __init__(self, component: EngineComponent, state: _EngineState) -> None:
        self._c = component
        self._s = state
        cfg = component.config
        self.name = f"engine-file/{state.spec.name}"
        self.interval_s = cfg.check_interval_s
        self.timeout_s = cfg.stable_window_s + cfg.hash_min_interval_s + cfg.hash_timeout_s + 5.0

    async def run(self) -> Sequence[CheckResult]:
        return await self._c.verify(self._s)

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [
            self._c.result(
                self._s,
                "checksum",
                CheckStatus.UNKNOWN,
                "EngineHashTimeout",
                f"verification still running after {elapsed_s:.0f}s",
            )
        ]


class EngineComponent:
    """Verifies production engine files. Wire with :func:`parse_engines_config`.

    ``gpu_compute_capability`` returns this GPU's compute capability (``"9.0"``) or None;
    ``gpu_free_memory_bytes`` (or ``gpu_free_memory_mib``) the free memory of the GPU the engine
    would load on, or None;
    ``runtime_tensorrt_version`` the canary worker's TensorRT version, or None (config
    ``tensorrt_version`` takes precedence: it names the main server's runtime).
    """

    name = "engines"

    def __init__(
        self,
        config: EnginesConfig,
        *,
        registry: CollectorRegistry,
        state_dir: Path | None = None,
        simulate: bool = False,
        scenario: object | None = None,
        gpu_compute_capability: Callable[[], str | None] | None = None,
        gpu_free_memory_bytes: Callable[[], int | None] | None = None,
        gpu_free_memory_mib: Callable[[], float | None] | None = None,
        runtime_tensorrt_version: Callable[[], str | None] | None = None,
        watcher_factory: Callable[[list[Path]], tuple[FileWatcher, str | None]] | None = None,
    ) -> None:
        self.config = config
        self.state_dir = state_dir
        self.simulate = simulate  # engine checks run on real files in simulation too
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
        self._states = [_EngineState(spec) for spec in config.engines]
        self._checks = [EngineFileCheck(self, s) for s in self._states]
        self._by_path: dict[Path, list[_EngineState]] = {}
        self._sink: ResultSink | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watcher: FileWatcher | None = None
        self._change_tasks: set[asyncio.Task[None]] = set()
        self.watch_mode: str | None = None
        self.watch_note: str | None = None
        labels = ["engine"]
        self.m_verified = Gauge(
            "trt_health_engine_verified",
            "1 when the engine file passed every check at its last verification",
            labels,
            registry=registry,
        )
        self.m_size = Gauge("trt_health_engine_size_bytes", "Engine file size", labels, registry=registry)
        self.m_hash_seconds = Gauge(
            "trt_health_engine_hash_seconds",
            "Wall time of the last full SHA-256 of the engine file",
            labels,
            registry=registry,
        )
        self.m_hash_rate = Gauge(
            "trt_health_engine_hash_bytes_per_second",
            "Throughput of the last full SHA-256 of the engine file",
            labels,
            registry=registry,
        )
        self.m_hash_cost = Gauge(
            "trt_health_engine_hash_seconds_per_gigabyte",
            "Cost of hashing: seconds per GB (1e9 bytes) at the last full SHA-256",
            labels,
            registry=registry,
        )
        self.m_changes = Counter(
            "trt_health_engine_changes",
            "Changes of the engine or manifest file seen on the volume",
            labels,
            registry=registry,
        )
        self.m_verifications = Counter(
            "trt_health_engine_verifications",
            "Engine verifications by outcome",
            [*labels, "outcome"],
            registry=registry,
        )
        self.m_reverify = Gauge(
            "trt_health_engine_reverify_seconds",
            "From a change seen by the watcher to the finished re-verification",
            labels,
            registry=registry,
        )
        self.m_watch = Gauge(
            "trt_health_engine_watch_mode",
            "1 for the change-detection mode in use (inotify or poll)",
            ["mode"],
            registry=registry,
        )

    # -- Component protocol -------------------------------------------------------------------

    def checks(self) -> Sequence[Check]:
        return list(self._checks)

    async def start(self, sink: ResultSink) -> None:
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        first: list[CheckResult] = []
        for s in self._states:
            for cond in ("file", "checksum") if s.spec.manifest else ("file",):
                first.append(
                    self.result(s, cond, CheckStatus.UNKNOWN, "LoadingEngine", "engine not verified yet")
                )
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

    # -- watching ---------------------------------------------------------------------------

    def _watch_paths(self) -> list[Path]:
        self._by_path.clear()
        for s in self._states:
            for p in (s.spec.manifest, s.spec.file):
                if p is not None:
                    self._by_path.setdefault(_abs(p), []).append(s)
            if s.spec.manifest is not None:
                # The engine named inside the manifest: resolvable only once it parsed.
                path = self._engine_path(s)
                if path is not None:
                    self._by_path.setdefault(_abs(path), []).append(s)
        return list(self._by_path)

    def _engine_path(self, s: _EngineState) -> Path | None:
        if s.spec.file is not None:
            return s.spec.file
        if s.manifest is None and s.spec.manifest is not None:
            with contextlib.suppress(ConfigError, OSError):
                s.manifest = _load_manifest(s.spec.manifest)
        return s.manifest.path if s.manifest is not None else None

    async def _start_watcher(self, paths: list[Path]) -> None:
        if self._watcher_factory is not None:
            watcher, note = self._watcher_factory(paths)
        else:
            watcher, note = choose_watcher(self.config.watch, paths, self.config.poll_interval_s)
        self._watcher = watcher
        self.watch_mode = watcher.mode
        self.watch_note = note
        self.m_watch.labels(mode=watcher.mode).set(1)
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
        A manifest not parsed yet is parsed on a thread first (never on the loop: a huge one
        took seconds)."""
        states = self._by_path.get(_abs(path), [])
        if any(s.path is None and s.manifest is None and s.spec.manifest is not None for s in states):
            task = asyncio.ensure_future(self._on_change_parsed(path, states))
            self._change_tasks.add(task)
            task.add_done_callback(self._change_tasks.discard)
        else:
            self._report_change(path, states, {})

    async def _on_change_parsed(self, path: Path, states: list[_EngineState]) -> None:
        paths: dict[int, Path | None] = {}
        for s in states:
            paths[id(s)] = s.path or await asyncio.to_thread(self._engine_path, s)
        self._report_change(path, states, paths)

    def _report_change(
        self, path: Path, states: list[_EngineState], engine_paths: dict[int, Path | None]
    ) -> None:
        sink = self._sink
        now = time.monotonic()
        for s in states:
            s.event_at = now
            self.m_changes.labels(engine=s.spec.name).inc()
            engine_path = engine_paths.get(id(s)) or s.path or (s.manifest.path if s.manifest else None)
            # A stat here is cheap on the local volumes inotify serves; on polled (network)
            # volumes the triggered check finds a deletion itself, off the event loop.
            gone = (
                self.watch_mode == "inotify" and engine_path is not None and stat_stamp(engine_path) is None
            )
            level = logging.WARNING if s.verified_once else logging.INFO
            log.log(
                level,
                "engine file changed on the volume; re-verifying",
                extra={"engine": s.spec.name, "path": str(path), "deleted": gone},
            )
            if sink is not None:
                results: list[CheckResult] = []
                if gone and engine_path is not None:
                    results.append(
                        self.result(
                            s,
                            "file",
                            CheckStatus.FAIL,
                            "EngineMissing",
                            f"{engine_path} was deleted",
                        )
                    )
                if s.verified_once:
                    results.append(
                        self.result(
                            s,
                            "change",
                            CheckStatus.FAIL,
                            "EngineReplaced",
                            f"{path} changed after verification; re-verifying",
                            severity=Severity.WARNING,
                        )
                    )
                if results:
                    sink.submit(results)
                sink.trigger(f"engine-file/{s.spec.name}")

    # -- results ----------------------------------------------------------------------------

    def gates(self, s: _EngineState) -> frozenset[str]:
        svc = engine_service(s.spec.name)
        if not s.verified_once or self.config.gate_readiness_after_verified:
            return frozenset({svc, SERVICE_READINESS})
        return frozenset({svc})

    def result(
        self,
        s: _EngineState,
        cond: str,
        status: CheckStatus,
        reason: str,
        message: str,
        *,
        severity: Severity = Severity.CRITICAL,
        value: float | str | None = None,
        labels: dict[str, str] | None = None,
    ) -> CheckResult:
        lab = {"engine": s.spec.name}
        if s.path is not None:
            lab["path"] = str(s.path)
        m = s.manifest
        if m is not None and m.version is not None:  # what the actions component acts on
            lab["version"] = m.version
            if m.sha256:
                lab["sha256"] = m.sha256
            if m.fallback:
                lab["fallback"] = m.fallback
        if labels:
            lab.update(labels)
        return CheckResult(
            name=f"{engine_service(s.spec.name)}/{cond}",
            status=status,
            severity=severity,
            reason=reason,
            message=message,
            labels=lab,
            value=value,
            gates=self.gates(s),
        )

    def _ok(
        self,
        s: _EngineState,
        cond: str,
        message: str,
        *,
        reason: str = "",
        value: float | str | None = None,
        labels: dict[str, str] | None = None,
        severity: Severity = Severity.CRITICAL,
    ) -> CheckResult:
        return self.result(
            s, cond, CheckStatus.OK, reason, message, value=value, labels=labels, severity=severity
        )

    def _unmonitored(self, s: _EngineState, cond: str, message: str) -> CheckResult:
        return self._ok(s, cond, message, reason="Unmonitored", severity=Severity.INFO)

    def _blocked(self, s: _EngineState, conds: Sequence[str], reason: str, message: str) -> list[CheckResult]:
        return [self.result(s, c, CheckStatus.UNKNOWN, reason, f"not checked: {message}") for c in conds]

    # -- verification -----------------------------------------------------------------------

    def _format(self, s: _EngineState, path: Path) -> str:
        if s.spec.format:
            return s.spec.format
        if s.manifest is not None:
            return s.manifest.format
        return "onnx" if path.suffix.lower() == ".onnx" else "tensorrt-plan"

    async def verify(self, s: _EngineState) -> list[CheckResult]:
        """Run every check for one engine; returns one result per condition it owns."""
        results = await self._verify(s)
        required = [r for r in results if r.name.rsplit("/", 1)[-1] in _REQUIRED]
        ok = bool(required) and all(r.ok for r in required)
        name = s.spec.name
        self.m_verified.labels(engine=name).set(1 if ok else 0)
        self.m_verifications.labels(engine=name, outcome="ok" if ok else "failed").inc()
        if s.event_at is not None:
            self.m_reverify.labels(engine=name).set(time.monotonic() - s.event_at)
            s.event_at = None
        if ok:
            results.append(await self._after_success(s))
        elif s.verified_once:
            msg = (
                "the engine file changed after verification and no longer verifies; "
                "the running server still holds the engine it loaded"
            )
            extra: dict[str, str] = {}
            kept = self.last_good_path(s.spec.name)
            if kept is not None:
                msg += f"; last good copy: {kept}"
                extra["last_good"] = str(kept)
            results.append(
                self.result(
                    s,
                    "change",
                    CheckStatus.FAIL,
                    "EngineReplaced",
                    msg,
                    severity=Severity.WARNING,
                    labels=extra,
                )
            )
        return results

    async def _after_success(self, s: _EngineState) -> CheckResult:
        sha = s.hash_result.sha256 if s.hash_result else None
        stamp = s.observed
        if not s.verified_once:
            s.verified_once = True
            s.baseline_sha, s.baseline_stamp = sha, stamp
            log.info("engine verified", extra={"engine": s.spec.name, "sha256": sha})
            await asyncio.to_thread(self._keep_last_good, s)  # copies files: off the loop
            return self._ok(s, "change", "verified; baseline recorded")
        same = (sha is not None and sha == s.baseline_sha) or (sha is None and stamp == s.baseline_stamp)
        if same:
            return self._ok(s, "change", "the file is the one verified first")
        await asyncio.to_thread(self._keep_last_good, s)
        return self.result(
            s,
            "change",
            CheckStatus.FAIL,
            "EngineReplaced",
            "the engine file was replaced by another one that verifies; the running server "
            "still holds the one it loaded (it loads the new file on restart)",
            severity=Severity.WARNING,
            labels={"sha256": sha or ""},
        )

    def _keep_last_good(self, s: _EngineState) -> None:
        """Keep a copy of the last verified engine + manifest (hard link when possible)."""
        root = self.config.last_good_dir
        if root is None or s.path is None:
            return
        dest = root / s.spec.name
        try:
            dest.mkdir(parents=True, exist_ok=True)
            srcs = [s.path]
            if s.spec.manifest is not None:
                srcs.append(s.spec.manifest)
            for src in srcs:
                target = dest / src.name
                tmp = dest / f".{src.name}.tmp"
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copy2(src, tmp)
                tmp.replace(target)
                if src == s.path:
                    s.kept_stamp = stat_stamp(target)
            if s.manifest is not None and s.spec.manifest is not None:
                # Point the kept manifest at the kept file (same basename next to it).
                kept = _load_manifest(dest / s.spec.manifest.name)
                if Path(kept.file).name != s.path.name:
                    from dataclasses import replace

                    dump_manifest(replace(kept, file=s.path.name), dest / s.spec.manifest.name)
        except (OSError, ConfigError) as exc:
            log.warning(
                "could not keep the last good engine",
                extra={"engine": s.spec.name, "error": str(exc)},
            )

    async def _verify(self, s: _EngineState) -> list[CheckResult]:
        out: list[CheckResult] = []
        spec = s.spec
        cfg = self.config
        # 1. manifest
        manifest_conds: tuple[str, ...] = ()
        if spec.manifest is not None:
            manifest_conds = ("checksum", "arch", "memory")
            try:
                m = await asyncio.to_thread(_load_manifest, spec.manifest)
            except FileNotFoundError:
                out.append(
                    self.result(
                        s,
                        "manifest",
                        CheckStatus.FAIL,
                        "EngineManifestInvalid",
                        f"manifest {spec.manifest} not found",
                    )
                )
                m = None
            except ConfigError as exc:
                out.append(
                    self.result(
                        s,
                        "manifest",
                        CheckStatus.FAIL,
                        "EngineManifestInvalid",
                        "; ".join(exc.problems)[:500],
                    )
                )
                m = None
            except OSError as exc:
                out.append(
                    self.result(
                        s,
                        "manifest",
                        CheckStatus.FAIL,
                        "EngineManifestInvalid",
                        f"manifest unreadable: {exc}",
                    )
                )
                m = None
            if m is not None:
                if m.name != spec.name:
                    log.info(
                        "manifest name differs from the configured engine name",
                        extra={"engine": spec.name, "manifest_name": m.name},
                    )
                s.manifest = m
                out.append(self._ok(s, "manifest", f"manifest {spec.manifest} is valid"))
            elif s.manifest is None:
                return out + self._blocked(
                    s, ("file", *manifest_conds), "EngineManifestInvalid", "no valid manifest"
                )
            # else: keep checking against the last good manifest; the manifest failure gates.
        path = spec.file if spec.file is not None else s.manifest.path if s.manifest else None
        assert path is not None
        if s.path != path:
            s.path = path
            if self._watcher is not None and _abs(path) not in self._by_path:
                log.warning(
                    "engine path changed; restart the sidecar to watch the new path",
                    extra={"engine": spec.name, "path": str(path)},
                )
        fmt = self._format(s, path)
        plan_conds: tuple[str, ...] = ("plan", "version", "arch") if fmt == "tensorrt-plan" else ()
        dependent = tuple(dict.fromkeys((*manifest_conds, *plan_conds)))

        # 2. present and stable
        now = time.monotonic()
        previous = s.observed if now - s.observed_at >= cfg.stable_window_s else None
        stab = await observe_stability(path, cfg.stable_window_s, previous=previous)
        if stab.stamp is None:
            s.observed = None
            problem = path_problem(path)
            if problem not in (None, MISSING, DANGLING):  # there, but no engine can be
                msg = f"{path} is {problem}, not a regular file"
                out.append(self.result(s, "file", CheckStatus.FAIL, "EngineNotAFile", msg))
                return out + self._blocked(s, dependent, "EngineNotAFile", msg)
            msg = f"{path} does not exist" if stab.previous is None else f"{path} disappeared"
            if problem == DANGLING:
                msg = f"{path} is a dangling symlink (its target does not exist)"
            out.append(self.result(s, "file", CheckStatus.FAIL, "EngineMissing", msg))
            return out + self._blocked(s, dependent, "EngineMissing", msg)
        if not stab.stable:
            s.observed, s.observed_at = stab.stamp, time.monotonic()
            msg = f"{path} is being written (size or mtime changed within {cfg.stable_window_s}s)"
            out.append(self.result(s, "file", CheckStatus.FAIL, "EngineUnstable", msg))
            self._retrigger(s, cfg.stable_window_s)
            return out + self._blocked(s, dependent, "EngineUnstable", msg)
        stamp = stab.stamp
        if s.observed != stamp:
            s.observed, s.observed_at = stamp, time.monotonic()
        self.m_size.labels(engine=spec.name).set(stamp.size)
        out.append(self._ok(s, "file", f"{path} present and stable ({stamp.size} bytes)", value=stamp.size))
        m = s.manifest

        # 3. plan header (read first: cheap, and a non-plan makes hashing moot for diagnosis)
        header: PlanHeader | None = None
        if fmt == "tensorrt-plan":
            try:
                header = await asyncio.to_thread(read_plan_header, path)
            except OSError as exc:
                header = None
                out.append(self.result(s, "plan", CheckStatus.FAIL, "EngineMissing", f"unreadable: {exc}"))
            s.header = header
            if header is not None:
                if header.is_plan:
                    out.append(
                        self._ok(
                            s,
                            "plan",
                            "TensorRT plan tag present",
                            labels={"header_version": header.tensorrt_version or ""},
                        )
                    )
                else:
                    out.append(
                        self.result(
                            s,
                            "plan",
                            CheckStatus.FAIL,
                            "EngineNotAPlan",
                            f"not a TensorRT plan: {header.problem}",
                        )
                    )
            out.append(self._version_result(s, header, m))

        # 4. checksum
        if m is not None:
            out.append(await self._checksum_result(s, path, stamp, m))

        # 5. compute capability
        if fmt == "tensorrt-plan":
            out.append(self._arch_result(s, m))

        # 6. memory (warning only)
        if m is not None:
            out.append(self._memory_result(s, stamp.size))
        return out

    def _retrigger(self, s: _EngineState, delay: float) -> None:
        sink, loop = self._sink, self._loop
        if sink is None or loop is None:
            return
        loop.call_later(delay, sink.trigger, f"engine-file/{s.spec.name}")

    def _runtime(self) -> tuple[str | None, str]:
        if self.config.tensorrt_version:
            return self.config.tensorrt_version, "config"
        v = _call(self._runtime_version)
        return (str(v) if v else None), "canary-worker"

    def _version_result(
        self, s: _EngineState, header: PlanHeader | None, m: EngineManifest | None
    ) -> CheckResult:
        if header is None or not header.is_plan:
            return self.result(s, "version", CheckStatus.UNKNOWN, "EngineNotAPlan", "not checked: not a plan")
        if not header.layout_known or header.tensorrt_version is None:
            return self._ok(
                s,
                "version",
                f"plan header layout not recognised ({header.problem}); inconclusive, left to "
                "deserialisation",
                reason="PlanHeaderUnrecognized",
                severity=Severity.INFO,
            )
        hv = header.tensorrt_version
        vc = bool(m and m.version_compatible)
        if m is not None and m.tensorrt_version:
            agree = compare_versions(hv, m.tensorrt_version, version_compatible=False)
            if agree.compatible is False:
                return self.result(
                    s,
                    "version",
                    CheckStatus.FAIL,
                    "EngineVersionMismatch",
                    f"the plan header says TensorRT {hv} but the manifest says {m.tensorrt_version}",
                    labels={"header_version": hv},
                )
        runtime, source = self._runtime()
        if runtime is None:
            return self._ok(
                s,
                "version",
                f"plan built by TensorRT {hv}; runtime version unknown (set engines.tensorrt_version)",
                reason="Unmonitored",
                severity=Severity.INFO,
                value=hv,
            )
        verdict = compare_versions(hv, runtime, version_compatible=vc)
        if verdict.compatible is False:
            # The worker's runtime is not necessarily the main server's: only a warning then.
            sev = Severity.CRITICAL if source == "config" else Severity.WARNING
            return self.result(
                s,
                "version",
                CheckStatus.FAIL,
                "EngineVersionMismatch",
                f"{verdict.message} (runtime version from {source}; header advisory)",
                severity=sev,
                value=hv,
                labels={"header_version": hv, "runtime_version": runtime},
            )
        return self._ok(
            s,
            "version",
            verdict.message,
            value=hv,
            labels={"header_version": hv, "runtime_version": runtime},
        )

    def _arch_result(self, s: _EngineState, m: EngineManifest | None) -> CheckResult:
        if m is None or not m.compute_capability:
            return self._unmonitored(s, "arch", "no compute capability in a manifest to compare")
        gpu = self.config.compute_capability or _call(self._gpu_cc)
        if not gpu:
            return self._unmonitored(s, "arch", "this GPU's compute capability is unknown")
        ok, msg = check_compute_capability(m.compute_capability, str(gpu), m.hardware_compatibility)
        labels = {"built_for": m.compute_capability, "gpu": str(gpu)}
        if ok:
            return self._ok(s, "arch", msg, labels=labels)
        return self.result(s, "arch", CheckStatus.FAIL, "EngineArchMismatch", msg, labels=labels)

    def _memory_result(self, s: _EngineState, size: int) -> CheckResult:
        if not s.spec.check_memory:
            return self._unmonitored(s, "memory", "memory check disabled for this engine")
        free = _call(self._gpu_free)
        if free is None:
            return self._unmonitored(s, "memory", "free GPU memory unknown")
        free_i = int(free)
        if size > free_i:
            return self.result(
                s,
                "memory",
                CheckStatus.FAIL,
                "InsufficientGpuMemory",
                f"engine weights ~{size / 2**20:.0f} MiB exceed free GPU memory {free_i / 2**20:.0f} MiB",
                severity=Severity.WARNING,
                value=float(size - free_i),
            )
        return self._ok(
            s,
            "memory",
            f"engine {size / 2**20:.0f} MiB fits in {free_i / 2**20:.0f} MiB free",
            severity=Severity.WARNING,
        )

    async def _checksum_result(
        self, s: _EngineState, path: Path, stamp: FileStamp, m: EngineManifest
    ) -> CheckResult:
        cfg = self.config
        if m.size is not None and m.size >= 0 and stamp.size != m.size:
            what = "truncated" if stamp.size < m.size else "larger than expected"
            return self.result(
                s,
                "checksum",
                CheckStatus.FAIL,
                "EngineChecksumMismatch",
                f"size {stamp.size} bytes, manifest says {m.size} ({what})",
                value=float(stamp.size),
            )
        if m.sha256 is None:
            return self._unmonitored(s, "checksum", "manifest has no sha256")
        now = time.monotonic()
        fresh = (
            s.hash_result is not None
            and s.hashed_stamp == stamp
            and now - s.hashed_at < cfg.rehash_interval_s
        )
        if not fresh:
            wait = s.hash_started_at + cfg.hash_min_interval_s - now
            if wait > 0:
                await asyncio.sleep(wait)  # rate limit: a rewrite storm never hashes back to back
            s.hash_started_at = time.monotonic()
            try:
                res = await sha256_file(
                    path,
                    timeout_s=cfg.hash_timeout_s,
                    max_bytes_per_s=cfg.hash_max_mb_per_s * 1e6,
                )
            except HashTimeout as exc:
                return self.result(
                    s,
                    "checksum",
                    CheckStatus.UNKNOWN,
                    "EngineHashTimeout",
                    f"hashing did not finish in {cfg.hash_timeout_s:.0f}s ({exc.done / 1e6:.0f} MB read)",
                )
            except FileNotFoundError:
                return self.result(s, "checksum", CheckStatus.FAIL, "EngineMissing", f"{path} disappeared")
            except OSError as exc:
                return self.result(
                    s,
                    "checksum",
                    CheckStatus.FAIL,
                    "EngineChecksumMismatch",
                    f"read error while hashing: {exc}",
                )
            after = stat_stamp(path)
            if after != stamp:
                self._retrigger(s, cfg.stable_window_s)
                return self.result(
                    s,
                    "checksum",
                    CheckStatus.FAIL,
                    "EngineUnstable",
                    "the file changed while it was hashed",
                )
            s.hash_result, s.hashed_stamp, s.hashed_at = res, stamp, time.monotonic()
            name = s.spec.name
            self.m_hash_seconds.labels(engine=name).set(res.seconds)
            self.m_hash_rate.labels(engine=name).set(res.mb_per_s * 1e6)
            self.m_hash_cost.labels(engine=name).set(res.seconds_per_gb)
            log.info(
                "engine hashed",
                extra={
                    "engine": name,
                    "bytes": res.size,
                    "seconds": round(res.seconds, 3),
                    "mb_per_s": round(res.mb_per_s, 1),
                    "seconds_per_gb": round(res.seconds_per_gb, 2),
                },
            )
        done = s.hash_result
        assert done is not None
        res = done
        labels = {
            "mb_per_s": f"{res.mb_per_s:.0f}",
            "seconds_per_gb": f"{res.seconds_per_gb:.2f}",
        }
        if res.sha256 != m.sha256:
            return self.result(
                s,
                "checksum",
                CheckStatus.FAIL,
                "EngineChecksumMismatch",
                f"sha256 {res.sha256[:12]}… differs from the manifest's {m.sha256[:12]}…",
                value=res.seconds,
                labels=labels,
            )
        return self._ok(
            s,
            "checksum",
            f"sha256 matches ({res.size / 1e6:.0f} MB in {res.seconds:.2f}s, {res.mb_per_s:.0f} MB/s)",
            value=res.seconds,
            labels=labels,
        )

    # -- introspection (diagnostics, tests) -------------------------------------------------

    def last_good_path(self, name: str) -> Path | None:
        """The kept copy of the last verified engine file, when ``last_good_dir`` is set."""
        root = self.config.last_good_dir
        for s in self._states:
            if s.spec.name == name and root is not None and s.path is not None:
                kept = root / name / s.path.name
                # A hard link shares the inode: an in-place rewrite of the engine changes the
                # kept copy too, so it is offered only while its stamp is the one kept.
                # (ctime is left out: unlinking the original changes the shared inode's ctime.)
                now, was = stat_stamp(kept), s.kept_stamp
                if now is None or was is None:
                    return None
                same = (now.size, now.mtime_ns, now.inode) == (was.size, was.mtime_ns, was.inode)
                return kept if same else None
        return None

    def verified(self, name: str) -> bool:
        """True once the named engine passed every check at least once."""
        return any(s.verified_once for s in self._states if s.spec.name == name)
