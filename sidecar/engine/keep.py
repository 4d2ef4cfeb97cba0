"""The last-good keep: a copy of the last verified engine file and its manifest.

With ``engines.last_good_dir`` set, every engine that verifies (the first one, and a
replacement that verifies) is kept as ``<last_good_dir>/<name>/<file name>`` next to its
manifest (rewritten to point at the kept file). A hard link when the folder is on the engine's
file system, else a copy. :meth:`LastGoodKeep.last_good` answers which engine is the last good
one and where it lies, for the operator (the ``EngineReplaced`` warning names it) and for a
rollback.

Every method here does file I/O and may take long (a copy of a multi-GB plan): call it from a
thread (``asyncio.to_thread``), never on the event loop. The keep is thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from sidecar.config import ConfigError
from sidecar.engine.files import FileStamp, stat_stamp
from sidecar.engine.manifest import dump_manifest, read_manifest

log = logging.getLogger(__name__)

__all__ = ["KeptEngine", "LastGoodKeep"]


@dataclass(frozen=True, slots=True)
class KeptEngine:
    """The last good engine of one configured engine: ``path`` is the kept file, ``manifest``
    the kept manifest next to it (None without one), ``sha256`` the verified digest (None when
    the manifest had none), ``version`` the manifest's ``version`` (the main server's name for
    it, None when not given), ``stamp`` the kept file's stamp when it was kept."""

    name: str
    path: Path
    manifest: Path | None
    sha256: str | None
    version: str | None
    stamp: FileStamp


class LastGoodKeep:
    """Keeps the last verified engine of each configured engine under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._kept: dict[str, KeptEngine] = {}

    def keep(
        self,
        name: str,
        engine: Path,
        manifest: Path | None,
        *,
        sha256: str | None,
        version: str | None = None,
    ) -> KeptEngine | None:
        """Keep ``engine`` (and ``manifest``) as the last good one of ``name``; None (logged)
        when it could not be kept. Blocking: hard link or copy, then a manifest rewrite."""
        dest = self.root / name
        kept_stamp: FileStamp | None = None
        with self._lock:
            try:
                dest.mkdir(parents=True, exist_ok=True)
                srcs = [engine] if manifest is None else [engine, manifest]
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
                    if src == engine:
                        kept_stamp = stat_stamp(target)
                kept_manifest = dest / manifest.name if manifest is not None else None
                if kept_manifest is not None:
                    # Point the kept manifest at the kept file (same basename next to it).
                    doc = read_manifest(kept_manifest)
                    if Path(doc.file).name != engine.name:
                        dump_manifest(replace(doc, file=engine.name), kept_manifest)
            except (OSError, ConfigError) as exc:
                log.warning("could not keep the last good engine", extra={"engine": name, "error": str(exc)})
                if kept_stamp is not None:  # the file itself was kept
                    self._kept[name] = KeptEngine(name, dest / engine.name, None, sha256, version, kept_stamp)
                return None
            if kept_stamp is None:
                return None
            kept = KeptEngine(name, dest / engine.name, kept_manifest, sha256, version, kept_stamp)
            self._kept[name] = kept
            return kept

    def last_good(self, name: str) -> KeptEngine | None:
        """The kept engine of ``name`` while it is still the file that was kept; else None.

        A hard link shares the inode: an in-place rewrite of the engine changes the kept copy
        too, so it is offered only while its stamp is the one kept. (ctime is left out:
        unlinking the original changes the shared inode's ctime.) Blocking: one ``stat``."""
        with self._lock:
            kept = self._kept.get(name)
        if kept is None:
            return None
        now, was = stat_stamp(kept.path), kept.stamp
        if now is None:
            return None
        same = (now.size, now.mtime_ns, now.inode) == (was.size, was.mtime_ns, was.inode)
        return kept if same else None
