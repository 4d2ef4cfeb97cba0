"""The last-good keep on real files: which engine is the last good one, and where it lies."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sidecar.engine.keep import LastGoodKeep
from sidecar.engine.manifest import load_manifest
from sidecar.testing.engine import plan_bytes, write_engine


def test_kept_engine_says_which_and_where(tmp_path: Path) -> None:
    """A hard link on the same file system; the kept manifest names the kept file and parses;
    sha256 and version are the verified ones."""
    data = plan_bytes(1)
    m = write_engine(tmp_path, data)
    engine = tmp_path / "model.plan"
    keep = LastGoodKeep(tmp_path / "keep")
    sha = hashlib.sha256(data).hexdigest()
    kept = keep.keep("prod", engine, m, sha256=sha, version="7")
    assert kept is not None and keep.last_good("prod") == kept
    assert (kept.path, kept.manifest, kept.sha256, kept.version) == (
        tmp_path / "keep" / "prod" / "model.plan",
        tmp_path / "keep" / "prod" / m.name,
        sha,
        "7",
    )
    assert os.stat(kept.path).st_ino == os.stat(engine).st_ino
    assert kept.manifest is not None
    assert load_manifest(kept.manifest).path == kept.path  # rewritten to the kept file
    assert keep.last_good("other") is None


def test_across_file_systems_it_copies(tmp_path: Path, other_fs: Path) -> None:
    m = write_engine(tmp_path, plan_bytes(2))
    kept = LastGoodKeep(other_fs).keep("prod", tmp_path / "model.plan", m, sha256=None)
    assert kept is not None
    assert os.stat(kept.path).st_dev != os.stat(tmp_path / "model.plan").st_dev
    assert kept.path.read_bytes() == plan_bytes(2)


def test_a_later_keep_replaces_the_earlier_and_a_rewrite_withdraws_it(tmp_path: Path) -> None:
    keep = LastGoodKeep(tmp_path / "keep")
    m = write_engine(tmp_path, plan_bytes(1))
    first = keep.keep("prod", tmp_path / "model.plan", m, sha256="a" * 64)
    staged = tmp_path / "new"
    staged.mkdir()
    write_engine(staged, plan_bytes(2))
    os.replace(staged / "model.plan", tmp_path / "model.plan")  # the kept link keeps the old inode
    assert first is not None and keep.last_good("prod") == first
    second = keep.keep("prod", tmp_path / "model.plan", m, sha256="b" * 64)
    assert second is not None and keep.last_good("prod") == second and second.sha256 == "b" * 64
    with (tmp_path / "model.plan").open("r+b") as f:  # in place: the shared inode changes too
        f.write(plan_bytes(3)[:4096])
        os.utime(f.fileno(), ns=(1, 1))
    assert keep.last_good("prod") is None


def test_a_keep_that_cannot_be_written_is_none(tmp_path: Path) -> None:
    (tmp_path / "keep").write_text("a file, not a folder")
    m = write_engine(tmp_path, plan_bytes(1))
    keep = LastGoodKeep(tmp_path / "keep")
    assert keep.keep("prod", tmp_path / "model.plan", m, sha256=None) is None
    assert keep.last_good("prod") is None
