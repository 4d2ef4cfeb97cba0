"""Fatal GPU latches persisted to a small JSON state file (an emptyDir in the pod).

NVML does not replay past events, so a fatal finding (Xid 79, an uncontained ECC error, a
row-remap failure, a lost GPU) must survive a sidecar restart. Each latch is kept per GPU UUID
with what was observed when it was set (volatile ECC counters, the simulated reset counter,
the recovery action, the node's boot id); a latch clears only on evidence of a reset
(see :mod:`sidecar.gpu.component`), never by timeout. Writes are atomic (temp file, fsync,
rename), so a crash mid-write leaves the previous file intact. A file that cannot be read is
reported (``problem``) and the state is re-derived from NVML.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sidecar.safeload import MAX_STATE_BYTES, UnsafeDocumentError, read_bounded

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Latch:
    """One sticky fatal finding on one GPU."""

    kind: str  # "xid", "ecc", "remap", "lost"
    reason: str  # e.g. "XidFatal79", "EccUncorrectable"
    message: str
    scope: str = "gpu"  # "gpu" or "node"
    code: int = 0  # the Xid, when kind == "xid"
    since: float = 0.0  # wall time


@dataclass(slots=True)
class Observed:
    """Last values seen for one GPU: the baselines that make a reset observable."""

    volatile_uncorrected: int | None = None
    volatile_corrected: int | None = None
    reset_count: int | None = None
    recovery_action: int | None = None


@dataclass(slots=True)
class GpuLatchState:
    latches: list[Latch] = field(default_factory=list)
    observed: Observed = field(default_factory=Observed)


def read_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's boot id (changes at every boot), or "" when unreadable."""
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


class LatchStore:
    """The persisted latches of every GPU. Thread-safe (listener thread + event loop)."""

    def __init__(self, path: Path, *, boot_id: str = "") -> None:
        self.path = path
        self.boot_id = boot_id
        self.previous_boot_id = ""
        self.problem: str | None = None  # a load/save problem, reported as a warning
        self._lock = threading.RLock()
        self._gpus: dict[str, GpuLatchState] = {}
        self._dirty = False

    # -- load / save --------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file; a missing file is an empty state, a broken one a reported problem."""
        with self._lock:
            try:
                text = read_bounded(self.path, MAX_STATE_BYTES)
            except FileNotFoundError:
                return
            except (OSError, UnsafeDocumentError) as exc:
                self.problem = f"state file {self.path} unreadable: {exc}"
                log.warning("GPU state file unreadable", extra={"path": str(self.path)})
                return
            try:
                doc = json.loads(text)
                self._gpus = self._parse(doc)
                self.previous_boot_id = str(doc.get("boot_id", ""))
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.problem = f"state file {self.path} is not valid: {exc}"
                log.warning(
                    "GPU state file ignored", extra={"path": str(self.path), "error": str(exc)}
                )
                self._gpus = {}

    @staticmethod
    def _parse(doc: Any) -> dict[str, GpuLatchState]:
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise ValueError(f"expected a version {STATE_VERSION} document")
        out: dict[str, GpuLatchState] = {}
        for uuid, raw in dict(doc.get("gpus", {})).items():
            latches = [Latch(**item) for item in raw.get("latches", [])]
            observed = Observed(**raw.get("observed", {}))
            out[str(uuid)] = GpuLatchState(latches=latches, observed=observed)
        return out

    def rebooted(self) -> bool:
        """True when the file was written during an earlier boot of this node."""
        return bool(self.previous_boot_id and self.boot_id and self.previous_boot_id != self.boot_id)

    def save(self) -> None:
        """Write atomically if anything changed."""
        with self._lock:
            if not self._dirty:
                return
            doc = {
                "version": STATE_VERSION,
                "boot_id": self.boot_id,
                "written_at": time.time(),
                "gpus": {
                    uuid: {
                        "latches": [asdict(latch) for latch in st.latches],
                        "observed": asdict(st.observed),
                    }
                    for uuid, st in self._gpus.items()
                },
            }
            data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(data)
                        fh.flush()
                        os.fsync(fh.fileno())
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
            except OSError as exc:
                self.problem = f"state file {self.path} not writable: {exc}"
                log.warning("GPU state file not writable", extra={"path": str(self.path)})
                return
            self._dirty = False
            if self.problem and "not writable" in self.problem:
                self.problem = None

    # -- access -------------------------------------------------------------------------------

    def gpu(self, uuid: str) -> GpuLatchState:
        with self._lock:
            st = self._gpus.get(uuid)
            if st is None:
                st = self._gpus[uuid] = GpuLatchState()
            return st

    def known(self, uuid: str) -> bool:
        with self._lock:
            return uuid in self._gpus

    def latches(self, uuid: str) -> list[Latch]:
        with self._lock:
            st = self._gpus.get(uuid)
            return list(st.latches) if st else []

    def all_latches(self) -> dict[str, list[Latch]]:
        with self._lock:
            return {u: list(st.latches) for u, st in self._gpus.items() if st.latches}

    def add(self, uuid: str, latch: Latch) -> bool:
        """Add a latch unless one with the same kind and reason exists. True when added."""
        with self._lock:
            st = self.gpu(uuid)
            if any(x.kind == latch.kind and x.reason == latch.reason for x in st.latches):
                return False
            st.latches.append(latch)
            self._dirty = True
            return True

    def remove(self, uuid: str, kind: str, reason: str | None = None) -> bool:
        with self._lock:
            st = self.gpu(uuid)
            keep = [
                x for x in st.latches if not (x.kind == kind and reason in (None, x.reason))
            ]
            changed = len(keep) != len(st.latches)
            st.latches = keep
            self._dirty |= changed
            return changed

    def clear(self, uuid: str, *, before: float | None = None) -> list[Latch]:
        """Drop the latches of a GPU (a reset was observed): all of them, or only those set at
        or before wall time ``before``. Returns what was cleared."""
        with self._lock:
            st = self.gpu(uuid)
            cleared = [x for x in st.latches if before is None or x.since <= before]
            st.latches = [x for x in st.latches if not (before is None or x.since <= before)]
            self._dirty |= bool(cleared)
            return cleared

    def observe(self, uuid: str, **values: int | None) -> None:
        with self._lock:
            obs = self.gpu(uuid).observed
            for key, value in values.items():
                if getattr(obs, key) != value:
                    setattr(obs, key, value)
                    self._dirty = True
