"""Engine file verification with real files on disk, real inotify and real stat polling."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sidecar.core.values import CheckStatus, Severity
from sidecar.engine.component import EngineComponent
from sidecar.engine.config import EngineSpec
from sidecar.engine.plan import make_plan_header
from sidecar.runtime.watch import PollWatcher, choose_watcher
from sidecar.testing.engine import PLAN_VERSION, Sink, config, is_, plan_bytes, started, write_engine


async def test_good_engine_verifies_then_stops_gating_readiness(tmp_path: Path) -> None:
    """A correct plan + manifest passes every check; before that readiness is gated, after not."""
    m = write_engine(tmp_path, plan_bytes())
    comp, sink = await started(
        config(EngineSpec("prod", manifest=m), tensorrt_version="10.13.0.35"),
        gpu_compute_capability=lambda: "9.0",
        gpu_free_memory_bytes=lambda: 80 << 30,
    )
    try:
        assert sink.latest("engine/prod/file").reason == "LoadingEngine"  # type: ignore[union-attr]
        assert "readiness" in sink.latest("engine/prod/file").gates  # type: ignore[union-attr]
        await sink.wait_for(is_("change", ok=True))
        for cond in ("manifest", "file", "checksum", "plan", "version", "arch", "memory"):
            r = sink.latest(f"engine/prod/{cond}")
            assert r is not None and r.ok, (cond, r)
        assert comp.verified("prod")
        cs = sink.latest("engine/prod/checksum")
        assert cs is not None and float(cs.labels["mb_per_s"]) > 0
        # After verification the results gate only engine/prod.
        sink.trigger("engine-file/prod")
        t = time.monotonic()
        _, r = await sink.wait_for(is_("checksum"), after=t)
        assert r.gates == frozenset({"engine/prod"})
    finally:
        await comp.stop()


@pytest.mark.parametrize(
    ("mutate", "cond", "reason"),
    [
        (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "checksum", "EngineChecksumMismatch"),
        (lambda d: d[: len(d) // 2], "checksum", "EngineChecksumMismatch"),
        (lambda d: b"GARB" + d[4:], "plan", "EngineNotAPlan"),
    ],
    ids=["corrupt", "truncated", "wrong-magic"],
)
async def test_bad_file_fails_with_reason(
    tmp_path: Path, mutate: Callable[[bytes], bytes], cond: str, reason: str
) -> None:
    """Corrupt, truncated and wrong-magic files each fail their own condition and gate readiness."""
    good = plan_bytes()
    m = write_engine(tmp_path, good)
    (tmp_path / "model.plan").write_bytes(mutate(good))
    comp, sink = await started(config(EngineSpec("prod", manifest=m)))
    try:
        _, r = await sink.wait_for(is_(cond, reason))
        assert r.status is CheckStatus.FAIL and "readiness" in r.gates
        assert not comp.verified("prod")
    finally:
        await comp.stop()


async def test_truncated_message_says_truncated(tmp_path: Path) -> None:
    """A shorter file is caught by the size pre-check without hashing, and says 'truncated'."""
    good = plan_bytes()
    m = write_engine(tmp_path, good)
    (tmp_path / "model.plan").write_bytes(good[:1000])
    comp, sink = await started(config(EngineSpec("prod", manifest=m)))
    try:
        _, r = await sink.wait_for(is_("checksum", "EngineChecksumMismatch"))
        assert "truncated" in r.message
    finally:
        await comp.stop()


async def test_manifest_invalid_names_field(tmp_path: Path) -> None:
    """A manifest with a bad field fails engine/prod/manifest and the message names the field."""
    (tmp_path / "model.plan").write_bytes(plan_bytes())
    m = tmp_path / "model.plan.manifest.yaml"
    m.write_text("name: prod\nfile: model.plan\nsha256: nothex\n", encoding="utf-8")
    comp, sink = await started(config(EngineSpec("prod", manifest=m)))
    try:
        _, r = await sink.wait_for(is_("manifest", "EngineManifestInvalid"))
        assert "sha256" in r.message
        _, blocked = await sink.wait_for(is_("file", "EngineManifestInvalid"))
        assert blocked.status is CheckStatus.UNKNOWN
    finally:
        await comp.stop()


async def test_missing_engine_file(tmp_path: Path) -> None:
    """A configured file that does not exist fails engine/prod/file with EngineMissing."""
    comp, sink = await started(config(EngineSpec("prod", file=tmp_path / "none.plan")))
    try:
        _, r = await sink.wait_for(is_("file", "EngineMissing"))
        assert "readiness" in r.gates
    finally:
        await comp.stop()


async def test_file_being_written_is_unstable(tmp_path: Path) -> None:
    """A file that grows during the stability window is EngineUnstable, then verifies once done."""
    f = tmp_path / "model.plan"
    f.write_bytes(make_plan_header(PLAN_VERSION))
    stop = threading.Event()

    def writer() -> None:
        with f.open("ab") as out:
            for _ in range(40):
                if stop.is_set():
                    return
                out.write(b"\0" * 4096)
                out.flush()
                time.sleep(0.01)

    th = threading.Thread(target=writer)
    th.start()
    comp, sink = await started(config(EngineSpec("prod", file=f), stable_window_s=0.1))
    try:
        await sink.wait_for(is_("file", "EngineUnstable"))
        th.join()
        await sink.wait_for(is_("file", ok=True), within=5.0)
    finally:
        stop.set()
        th.join()
        await comp.stop()


async def test_version_arch_memory_mismatch(tmp_path: Path) -> None:
    """Header version vs configured runtime, CC vs GPU and size vs free memory each fail."""
    m = write_engine(tmp_path, plan_bytes())
    comp, sink = await started(
        config(EngineSpec("prod", manifest=m), tensorrt_version="11.4.0.106"),
        gpu_compute_capability=lambda: "8.9",
        gpu_free_memory_mib=lambda: 0.1,
    )
    try:
        _, v = await sink.wait_for(is_("version", "EngineVersionMismatch"))
        assert v.severity is Severity.CRITICAL and "10.13.0.35" in v.message
        _, a = await sink.wait_for(is_("arch", "EngineArchMismatch"))
        assert "8.9" in a.message
        _, mem = await sink.wait_for(is_("memory", "InsufficientGpuMemory"))
        assert mem.severity is Severity.WARNING
    finally:
        await comp.stop()


async def test_header_contradicts_manifest(tmp_path: Path) -> None:
    """A plan whose header version differs from the manifest's is EngineVersionMismatch."""
    m = write_engine(tmp_path, plan_bytes(version=(10, 12, 0, 1)))
    comp, sink = await started(config(EngineSpec("prod", manifest=m)))
    try:
        _, v = await sink.wait_for(is_("version", "EngineVersionMismatch"))
        assert "manifest" in v.message
    finally:
        await comp.stop()


def _replace_atomic(folder: Path, data: bytes) -> None:
    tmp = folder / ".model.plan.new"
    tmp.write_bytes(data)
    os.replace(tmp, folder / "model.plan")


def _rewrite_in_place(folder: Path, data: bytes) -> None:
    with (folder / "model.plan").open("r+b") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["atomic-rename", "in-place"])
@pytest.mark.parametrize("mode", ["inotify", "poll"])
async def test_change_after_verification_detected(tmp_path: Path, how: str, mode: str) -> None:
    """A plan replaced after verification is re-verified promptly (inotify < 1 s, poll within
    the poll interval) and reported on engine/prod without gating readiness."""
    good = plan_bytes(1)
    m = write_engine(tmp_path, good)
    comp, sink = await started(config(EngineSpec("prod", manifest=m), watch=mode))
    try:
        assert comp.watch_mode == mode
        await sink.wait_for(is_("change", ok=True))
        bad = plan_bytes(2)
        t0 = time.monotonic()
        (_replace_atomic if how == "atomic-rename" else _rewrite_in_place)(tmp_path, bad)
        t1, r = await sink.wait_for(is_("checksum", "EngineChecksumMismatch"), after=t0)
        latency = t1 - t0
        print(f"\n{mode} {how}: change -> EngineChecksumMismatch in {latency * 1000:.0f} ms")
        limit = 1.0 if mode == "inotify" else 0.25 + 0.75  # poll interval + hashing margin
        assert latency < limit
        assert r.gates == frozenset({"engine/prod"})
        _, ch = await sink.wait_for(is_("change", "EngineReplaced"), after=t0)
        assert ch.severity is Severity.WARNING
    finally:
        await comp.stop()


@pytest.mark.parametrize("mode", ["inotify", "poll"])
async def test_deleted_after_verification(tmp_path: Path, mode: str) -> None:
    """Deleting the verified plan is EngineMissing within 1 s (inotify) / the poll interval."""
    m = write_engine(tmp_path, plan_bytes())
    comp, sink = await started(config(EngineSpec("prod", manifest=m), watch=mode))
    try:
        await sink.wait_for(is_("change", ok=True))
        t0 = time.monotonic()
        (tmp_path / "model.plan").unlink()
        t1, _ = await sink.wait_for(is_("file", "EngineMissing"), after=t0)
        print(f"\n{mode} delete -> EngineMissing in {(t1 - t0) * 1000:.0f} ms")
        assert t1 - t0 < (1.0 if mode == "inotify" else 0.6)
    finally:
        await comp.stop()


async def test_gate_readiness_after_verified_option(tmp_path: Path) -> None:
    """With gate_readiness_after_verified, a post-verification failure still gates readiness."""
    m = write_engine(tmp_path, plan_bytes(1))
    comp, sink = await started(
        config(EngineSpec("prod", manifest=m), watch="inotify", gate_readiness_after_verified=True)
    )
    try:
        await sink.wait_for(is_("change", ok=True))
        t0 = time.monotonic()
        _replace_atomic(tmp_path, plan_bytes(3))
        _, r = await sink.wait_for(is_("checksum", "EngineChecksumMismatch"), after=t0)
        assert "readiness" in r.gates
    finally:
        await comp.stop()


async def test_replaced_by_good_engine_is_warning(tmp_path: Path) -> None:
    """A new engine + matching manifest verifies, but engine/prod/change warns EngineReplaced."""
    m = write_engine(tmp_path, plan_bytes(1))
    comp, sink = await started(config(EngineSpec("prod", manifest=m), watch="inotify"))
    try:
        await sink.wait_for(is_("change", ok=True))
        t0 = time.monotonic()
        sub = tmp_path / "staging"
        sub.mkdir()
        new_m = write_engine(sub, plan_bytes(5))
        os.replace(sub / "model.plan", tmp_path / "model.plan")
        os.replace(new_m, m)
        await sink.wait_for(is_("checksum", ok=True), after=t0 + 0.001, within=3)
        _, ch = await sink.wait_for(
            lambda r: is_("change", "EngineReplaced")(r) and "verifies" in r.message, after=t0
        )
        assert ch.status is CheckStatus.FAIL and ch.severity is Severity.WARNING
    finally:
        await comp.stop()


async def test_last_good_copy_kept(tmp_path: Path) -> None:
    """With last_good_dir, the verified engine and manifest are kept (hard link on one fs)."""
    m = write_engine(tmp_path, plan_bytes())
    keep = tmp_path / "last-good"
    comp, sink = await started(config(EngineSpec("prod", manifest=m), last_good_dir=keep))
    try:
        await sink.wait_for(is_("change", ok=True))
        kept = keep / "prod" / "model.plan"
        assert kept.read_bytes() == (tmp_path / "model.plan").read_bytes()
        assert (keep / "prod" / "model.plan.manifest.yaml").exists()
        assert os.stat(kept).st_ino == os.stat(tmp_path / "model.plan").st_ino
        # A bad replacement names the kept copy in the EngineReplaced warning.
        t0 = time.monotonic()
        _replace_atomic(tmp_path, plan_bytes(9))
        sink.trigger("engine-file/prod")
        _, ch = await sink.wait_for(
            lambda r: is_("change", "EngineReplaced")(r) and "last_good" in r.labels, after=t0
        )
        assert ch.labels["last_good"] == str(kept)
        assert kept.read_bytes() == plan_bytes()  # the kept copy is untouched by the rename
        assert comp.last_good_path("prod") == kept
    finally:
        await comp.stop()


async def test_last_good_not_offered_after_in_place_rewrite(tmp_path: Path) -> None:
    """An in-place rewrite also changes a hard-linked kept copy: it is then not offered."""
    m = write_engine(tmp_path, plan_bytes())
    keep = tmp_path / "last-good"
    comp, sink = await started(config(EngineSpec("prod", manifest=m), last_good_dir=keep))
    try:
        await sink.wait_for(is_("change", ok=True))
        assert comp.last_good_path("prod") is not None
        _rewrite_in_place(tmp_path, plan_bytes(4))
        assert comp.last_good_path("prod") is None
    finally:
        await comp.stop()


def test_auto_picks_poll_on_network_fs(tmp_path: Path) -> None:
    """watch: auto polls when the folder is on NFS (inotify sees no other client's writes)."""
    watcher, note = choose_watcher("auto", [tmp_path / "a.plan"], 1.0, fstype=lambda p: "nfs4")
    assert isinstance(watcher, PollWatcher) and note is not None and "nfs4" in note


def test_inotify_failure_falls_back_to_poll(tmp_path: Path) -> None:
    """When inotify cannot start (limits, no support), the watcher polls and says why."""

    def broken(paths: list[Path]) -> Any:
        raise OSError(28, "inotify watch limit reached")

    watcher, note = choose_watcher("inotify", [tmp_path / "a.plan"], 1.0, inotify_factory=broken)
    assert isinstance(watcher, PollWatcher) and note is not None and "limit" in note


def test_real_filesystem_type_is_found(tmp_path: Path) -> None:
    """filesystem_type reads /proc/self/mountinfo and names the tmp folder's file system."""
    from sidecar.runtime.watch import filesystem_type

    if not Path("/proc/self/mountinfo").exists():
        pytest.skip("no /proc/self/mountinfo")
    assert filesystem_type(tmp_path)


async def test_hash_cost_metrics_exported(tmp_path: Path) -> None:
    """After a hash, seconds-per-GB and bytes/s metrics are set for the engine."""
    m = write_engine(tmp_path, plan_bytes(size=4 << 20))
    reg = CollectorRegistry()
    comp = EngineComponent(config(EngineSpec("prod", manifest=m)), registry=reg)
    sink = Sink(comp)
    await comp.start(sink)
    try:
        await sink.wait_for(is_("change", ok=True))
        rate = reg.get_sample_value("trt_health_engine_hash_bytes_per_second", {"engine": "prod"})
        cost = reg.get_sample_value("trt_health_engine_hash_seconds_per_gigabyte", {"engine": "prod"})
        assert rate is not None and rate > 0 and cost is not None and cost > 0
        assert reg.get_sample_value("trt_health_engine_verified", {"engine": "prod"}) == 1
    finally:
        await comp.stop()
