"""The polled (and change-triggered) verification of one engine: the I/O edge.

:class:`EngineFileCheck` gathers the facts, in order (the manifest; the file present and
stable; the plan header; size and SHA-256; the GPU's compute capability and free memory), and
asks :class:`~sidecar.engine.verify.EngineVerification` what they mean. Every file access runs
on a thread, never on the event loop: manifest parsing, stats, the header read, hashing (with
its own deadline and rate limits) and the last-good keep (a copy of a multi-GB plan when the
keep folder is on another file system).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.config import ConfigError
from sidecar.core.values import CheckResult
from sidecar.engine.config import EnginesConfig
from sidecar.engine.files import (
    FileStamp,
    HashTimeout,
    observe_stability,
    path_problem,
    sha256_file,
    stat_stamp,
)
from sidecar.engine.keep import LastGoodKeep
from sidecar.engine.manifest import EngineManifest, read_manifest
from sidecar.engine.metrics import EngineMetrics
from sidecar.engine.plan import read_plan_header
from sidecar.engine.verify import EngineVerification

log = logging.getLogger(__name__)

__all__ = ["CheckWiring", "EngineFileCheck"]


@dataclass(frozen=True, slots=True)
class CheckWiring:
    """What a check needs from its component: the runtime TensorRT version and its source,
    this GPU's compute capability and free memory (each None when unknown), a way to run the
    check again after a delay, and whether a path is watched."""

    config: EnginesConfig
    metrics: EngineMetrics
    keep: LastGoodKeep | None
    runtime_version: Callable[[], tuple[str | None, str]]
    gpu_compute_capability: Callable[[], str | None]
    gpu_free_bytes: Callable[[], int | None]
    retrigger: Callable[[str, float], None]
    watched: Callable[[Path], bool | None]


class EngineFileCheck:
    """The polled (and event-triggered) verification of one engine."""

    def __init__(self, verification: EngineVerification, wiring: CheckWiring) -> None:
        self.v = verification
        self.w = wiring
        cfg = wiring.config
        self.name = f"engine-file/{verification.name}"
        self.interval_s = cfg.check_interval_s
        self.timeout_s = cfg.stable_window_s + cfg.hash_min_interval_s + cfg.hash_timeout_s + 5.0

    async def run(self) -> Sequence[CheckResult]:
        return await self.verify()

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        return [self.v.timed_out(elapsed_s)]

    async def last_good_path(self) -> Path | None:
        """The kept copy of the last verified engine file (None: none, or no longer it)."""
        keep = self.w.keep
        if keep is None:
            return None
        kept = await asyncio.to_thread(keep.last_good, self.v.name)
        return kept.path if kept is not None else None

    async def verify(self) -> list[CheckResult]:
        """Run every check for one engine; returns one result per condition it owns."""
        v = self.v
        results = await self._verify()
        ok = v.passed(results)
        self.w.metrics.verification(v.name, ok, v.reverify_seconds())
        if ok:
            first = not v.verified_once
            change, keep = v.succeeded()
            if first:
                sha = v.hash_result.sha256 if v.hash_result else None
                log.info("engine verified", extra={"engine": v.name, "sha256": sha})
            if keep:
                await self._keep()
            results.append(change)
        elif v.verified_once:
            results.append(v.failed_after_verified(await self.last_good_path()))
        return results

    async def _keep(self) -> None:
        keep, path = self.w.keep, self.v.path
        if keep is None or path is None:
            return
        sha = self.v.hash_result.sha256 if self.v.hash_result else None
        # a hard link or a copy of the whole file, then a manifest rewrite: off the loop
        version = self.v.manifest.version if self.v.manifest is not None else None
        await asyncio.to_thread(
            keep.keep, self.v.name, path, self.v.spec.manifest, sha256=sha, version=version
        )

    async def _manifest(self) -> tuple[list[CheckResult], bool]:
        """Stage 1: the manifest; False when verification cannot go on (none ever valid)."""
        v, spec = self.v, self.v.spec
        if spec.manifest is None:
            return [], True
        try:
            m = await asyncio.to_thread(read_manifest, spec.manifest)
        except FileNotFoundError:
            failed = v.manifest_failed(f"manifest {spec.manifest} not found")
        except ConfigError as exc:
            failed = v.manifest_failed("; ".join(exc.problems)[:500])
        except OSError as exc:
            failed = v.manifest_failed(f"manifest unreadable: {exc}")
        else:
            if m.name != spec.name:
                log.info(
                    "manifest name differs from the configured engine name",
                    extra={"engine": spec.name, "manifest_name": m.name},
                )
            return [v.manifest_ok(m)], True
        if v.manifest is None:
            return [failed, *v.no_manifest()], False
        return [failed], True  # keep checking against the last good manifest; the failure gates

    async def _verify(self) -> list[CheckResult]:
        v, cfg = self.v, self.w.config
        out, go_on = await self._manifest()
        if not go_on:
            return out
        path = v.engine_path()
        assert path is not None
        if v.path != path:
            v.path = path
            if self.w.watched(path) is False:
                log.warning(
                    "engine path changed; restart the sidecar to watch the new path",
                    extra={"engine": v.name, "path": str(path)},
                )
        fmt = v.format(path)

        # 2. present and stable
        stab = await observe_stability(path, cfg.stable_window_s, previous=v.stability_reference())
        problem = await asyncio.to_thread(path_problem, path) if stab.stamp is None else None
        judged = v.judge_file(path, stab, problem)
        out += judged.results
        if judged.retrigger:
            self.w.retrigger(self.name, cfg.stable_window_s)
        if not judged.proceed:
            return out
        stamp = stab.stamp
        assert stamp is not None
        self.w.metrics.size.labels(engine=v.name).set(stamp.size)
        m = v.manifest

        # 3. plan header (read first: cheap, and a non-plan makes hashing moot for diagnosis)
        if fmt == "tensorrt-plan":
            try:
                header = await asyncio.to_thread(read_plan_header, path)
            except OSError as exc:
                out.append(v.plan_unreadable(exc))
            else:
                out.append(v.plan_result(header))
            out.append(v.version_result(*self.w.runtime_version()))

        # 4. checksum
        if m is not None:
            out.append(await self._checksum(path, stamp, m))

        # 5. compute capability
        if fmt == "tensorrt-plan":
            out.append(v.arch_result(self.w.gpu_compute_capability()))

        # 6. memory (warning only)
        if m is not None:
            out.append(v.memory_result(stamp.size, self.w.gpu_free_bytes() if v.spec.check_memory else None))
        return out

    async def _checksum(self, path: Path, stamp: FileStamp, m: EngineManifest) -> CheckResult:
        v, cfg = self.v, self.w.config
        early = v.size_result(stamp, m)
        if early is not None:
            return early
        wait = v.hash_wait(stamp)
        if wait is not None:
            if wait > 0:
                await asyncio.sleep(wait)  # rate limit: a rewrite storm never hashes back to back
            v.hash_started()
            try:
                res = await sha256_file(
                    path, timeout_s=cfg.hash_timeout_s, max_bytes_per_s=cfg.hash_max_mb_per_s * 1e6
                )
            except HashTimeout as exc:
                return v.hash_timed_out(exc.done)
            except FileNotFoundError:
                return v.hash_missing(path)
            except OSError as exc:
                return v.hash_read_error(exc)
            if await asyncio.to_thread(stat_stamp, path) != stamp:
                self.w.retrigger(self.name, cfg.stable_window_s)
                return v.hash_unstable()
            v.hashed(res, stamp)
            self.w.metrics.hashed(v.name, res)
            log.info(
                "engine hashed",
                extra={
                    "engine": v.name,
                    "bytes": res.size,
                    "seconds": round(res.seconds, 3),
                    "mb_per_s": round(res.mb_per_s, 1),
                    "seconds_per_gb": round(res.seconds_per_gb, 2),
                },
            )
        return v.checksum_result(m)
