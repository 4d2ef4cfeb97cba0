"""Fatal GPU latches persisted to a small JSON state file (an emptyDir in the pod).

NVML does not replay past events, so a fatal finding (Xid 79, an uncontained ECC error, a
row-remap failure, a lost GPU) must survive a sidecar restart. Each latch is kept per GPU UUID
with when it was set; beside the latches each GPU keeps the baseline that makes a reset
observable (volatile ECC counters, the simulated reset counter, the recovery action) and the
wall time at which that baseline was sampled (``Observed.at``), plus the node's boot id.

The order of evidence: a reset (a change from the baseline) clears only the latches set at or
before the baseline was sampled. A latch set after it (a fatal Xid that arrived together with,
or just after, a reset) stays until a later reset: the baseline does not show whether the reset
came before or after the Xid, so the store fails closed.

Writes are atomic (temp file, fsync, rename), so a crash mid-write leaves the previous file
intact. File I/O (read, fsync, rename, listing) never runs under the lock that guards the
latches: the event loop reads and changes them while a worker thread writes a snapshot, and a
change made during a write keeps the store dirty for the next save. The store never fails
open (``health``, reported as the gating ``gpu/state`` condition):

- a file that does not parse (not UTF-8, not JSON, too large, an unknown ``version``, a wrong
  shape, ``{}``) is *corrupt*: its latches are unknown, so it is renamed aside to
  ``<file>.corrupt-<UTC time to the ns>`` (the newest :data:`MAX_ASIDE` are kept) and the store reports
  ``LatchStoreCorrupt`` until an operator has looked and removed the aside files;
- a file that exists but cannot be read is never overwritten: ``LatchStoreUnreadable``, retried
  on every save until it reads;
- a failed write (full disk, read-only or missing directory) is ``LatchStoreUnwritable`` until
  a write succeeds; the file is written at start-up so an unusable state dir is seen at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from sidecar.core.protocols import Clock
from sidecar.gpu.latchfile import (
    CorruptStateError,
    parse_state,
    read_state_bytes,
    render_state,
    short,
)
from sidecar.gpu.latchstate import (
    AddLatch,
    Applied,
    ClearOnReset,
    GpuLatchState,
    Latch,
    LatchChange,
    Observed,
    ObserveSample,
    RemoveLatch,
    apply_all,
    clear_latches,
)

__all__ = [
    "ASIDE_INFIX",
    "MAX_ASIDE",
    "REASON_CORRUPT",
    "REASON_UNREADABLE",
    "REASON_UNWRITABLE",
    "CorruptStateError",
    "GpuLatchState",
    "Latch",
    "LatchStore",
    "Observed",
    "StoreProblem",
    "read_boot_id",
]

log = logging.getLogger(__name__)

MAX_ASIDE = 3
ASIDE_INFIX = ".corrupt-"

REASON_CORRUPT = "LatchStoreCorrupt"
REASON_UNREADABLE = "LatchStoreUnreadable"
REASON_UNWRITABLE = "LatchStoreUnwritable"


@dataclass(frozen=True, slots=True)
class StoreProblem:
    """Why the latch store cannot be trusted right now (a gating condition)."""

    reason: str  # REASON_CORRUPT, REASON_UNREADABLE, REASON_UNWRITABLE
    message: str


def read_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's boot id (changes at every boot), or "" when unreadable."""
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


class LatchStore:
    """The persisted latches of every GPU. Thread-safe (listener thread + event loop).

    Two locks: ``_lock`` guards the in-memory state and is held only for memory operations
    (the event loop takes it); ``_io`` serialises the file's readers and writers (load, save:
    worker threads) and is never taken by the accessors."""

    def __init__(self, path: Path, *, boot_id: str = "", wall: Clock = time.time) -> None:
        self.path = path
        self.boot_id = boot_id
        self.previous_boot_id = ""
        self._wall = wall
        self._lock = threading.RLock()
        self._io = threading.Lock()
        self._gpus: dict[str, GpuLatchState] = {}
        self._dirty = False
        self._changes = 0  # counts changes: a write clears _dirty only if none came after it
        self._unreadable: str | None = None  # the file exists but could not be read
        self._unwritable: str | None = None
        self._corrupt: str | None = None  # why the last corrupt file was set aside
        self._aside_failed: str | None = None  # a corrupt file that could not be moved aside
        self._read: set[tuple[str, Latch]] = set()  # every latch read from the file

    def _mark(self) -> None:
        self._dirty = True
        self._changes += 1

    # -- load / save --------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file. A missing file is an empty state; an unreadable one is kept (and
        retried); a corrupt one is set aside. Marks the state dirty so the first ``save``
        proves the state dir is writable."""
        with self._io:
            with self._lock:
                self._mark()
            self._read_file()

    def _read_file(self) -> bool:
        """Read and merge the file (under ``_io``). True when it was read (or is absent)."""
        try:
            data = read_state_bytes(self.path)
            gpus, boot_id = parse_state(data)
        except (FileNotFoundError, NotADirectoryError):  # no file there (then saves tell)
            with self._lock:
                self._unreadable = None
            return True
        except CorruptStateError as exc:
            with self._lock:
                self._unreadable = None
            self._set_aside(str(exc))
            return True
        except OSError as exc:
            with self._lock:
                first = self._unreadable is None
                self._unreadable = f"state file {self.path} unreadable: {short(exc)}"
            if first:
                log.error(
                    "GPU latch state file unreadable; not overwritten, readiness held",
                    extra={"path": str(self.path), "error": short(exc)},
                )
            return False
        with self._lock:
            for uuid, st in gpus.items():  # merge: latches set meanwhile stay
                mine = self._state(uuid)
                for latch in st.latches:
                    self._read.add((uuid, latch))
                mine = apply_all(mine, [AddLatch(x) for x in st.latches]).state
                if mine.observed == Observed():
                    mine = replace(mine, observed=st.observed)
                self._gpus[uuid] = mine
            self.previous_boot_id = boot_id
            was_unreadable = self._unreadable is not None
            self._unreadable = None
        if was_unreadable:
            log.info("GPU latch state file readable again", extra={"path": str(self.path)})
        return True

    def _set_aside(self, why: str) -> None:
        now_ns = time.time_ns()  # the name sorts by when it was set aside
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 10**9))
        stamp = f"{stamp}.{now_ns % 10**9:09d}Z"
        aside = self.path.with_name(f"{self.path.name}{ASIDE_INFIX}{stamp}")
        n = 0
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}{ASIDE_INFIX}{stamp}-{n}")
        with self._lock:
            self._corrupt = why
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            with self._lock:
                self._aside_failed = f"could not be renamed aside: {short(exc)}"
            log.error(
                "GPU latch state file corrupt and could not be kept aside; not overwritten",
                extra={"path": str(self.path), "error": why, "rename_error": short(exc)},
            )
            return
        log.error(
            "GPU latch state file corrupt: kept aside, its latches are unknown, readiness held "
            "until the aside file is removed",
            extra={"path": str(self.path), "aside": str(aside), "error": why},
        )
        for old in self._aside_files()[:-MAX_ASIDE]:
            with contextlib.suppress(OSError):
                old.unlink()

    def _aside_files(self) -> list[Path]:
        """The corrupt files kept aside, oldest first."""
        try:
            names = os.listdir(self.path.parent)
        except OSError:
            return []
        prefix = f"{self.path.name}{ASIDE_INFIX}"
        return [self.path.with_name(n) for n in sorted(names) if n.startswith(prefix)]

    def read_from_file(self) -> frozenset[tuple[str, Latch]]:
        """Every (uuid, latch) this store read from its file (at :meth:`load`, or a later
        retry of an unreadable file): what it knew from there, whether it still holds it."""
        with self._lock:
            return frozenset(self._read)

    def rebooted(self) -> bool:
        """True when the file was written during an earlier boot of this node."""
        return bool(self.previous_boot_id and self.boot_id and self.previous_boot_id != self.boot_id)

    def mark_dirty(self) -> None:
        """Make the next :meth:`save` write the file even when nothing changed (a reload's
        replacement rewrites the file whole)."""
        with self._lock:
            self._mark()

    def save(self) -> None:
        """Write atomically if anything changed; retry reading a file that was unreadable
        first (it is never overwritten unread). Blocking (fsync): call it off the event loop;
        it holds the state lock only to take a snapshot and to record the outcome."""
        with self._io:
            with self._lock:
                unreadable = self._unreadable is not None
            if unreadable and not self._read_file():
                return
            with self._lock:
                aside_failed = self._aside_failed is not None
            if aside_failed:
                if self.path.exists():
                    return  # the corrupt file is still there: never overwrite it
                with self._lock:
                    self._aside_failed = None
            with self._lock:
                if not self._dirty:
                    return
                snapshot = dict(self._gpus)  # values: changes after this make new ones
                generation = self._changes
            data = render_state(snapshot, boot_id=self.boot_id, written_at=self._wall())
            try:
                self._write(data)
            except OSError as exc:
                with self._lock:
                    first = self._unwritable is None
                    self._unwritable = f"state file {self.path} not writable: {short(exc)}"
                if first:
                    log.error(
                        "GPU latch state file not writable; readiness held until a write succeeds",
                        extra={"path": str(self.path), "error": short(exc)},
                    )
                return
            with self._lock:
                if self._changes == generation:
                    self._dirty = False
                was_unwritable = self._unwritable is not None
                self._unwritable = None
            if was_unwritable:
                log.info("GPU latch state file writable again", extra={"path": str(self.path)})

    def _write(self, data: bytes) -> None:
        """Temp file, fsync, rename (under ``_io`` only)."""
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

    def health(self) -> StoreProblem | None:
        """Why the store cannot be trusted now (the worst problem), or None. Lists the state
        dir (call it off the event loop; not under the state lock)."""
        aside = self._aside_files()
        with self._lock:
            if self._unreadable is not None:
                return StoreProblem(REASON_UNREADABLE, self._unreadable)
            if self._aside_failed is not None:
                return StoreProblem(
                    REASON_CORRUPT,
                    f"state file {self.path} is corrupt ({self._corrupt}) and {self._aside_failed}",
                )
            if aside:
                why = f" ({self._corrupt})" if self._corrupt else ""
                return StoreProblem(
                    REASON_CORRUPT,
                    f"a corrupt state file was kept aside as {aside[-1].name}{why}: the latches it "
                    f"held are unknown; check the GPU, then remove {len(aside)} "
                    f"{self.path.name}{ASIDE_INFIX}* file(s) from {self.path.parent}",
                )
            if self._unwritable is not None:
                return StoreProblem(REASON_UNWRITABLE, self._unwritable)
            return None

    @property
    def problem(self) -> str | None:
        """The message of :meth:`health`, or None."""
        p = self.health()
        return None if p is None else p.message

    # -- access (memory only: safe on the event loop) -----------------------------------------

    def _state(self, uuid: str) -> GpuLatchState:
        st = self._gpus.get(uuid)
        if st is None:
            st = self._gpus[uuid] = GpuLatchState()
        return st

    def gpu(self, uuid: str) -> GpuLatchState:
        """One GPU's latches and baseline (a value; the GPU becomes known)."""
        with self._lock:
            return self._state(uuid)

    def view(self, uuid: str) -> GpuLatchState | None:
        """One GPU's latches and baseline, or None when the store does not know the GPU."""
        with self._lock:
            return self._gpus.get(uuid)

    def snapshot(self) -> dict[str, GpuLatchState]:
        """Every GPU the store knows, with its latches and baseline (values)."""
        with self._lock:
            return dict(self._gpus)

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

    def apply(self, uuid: str, changes: Iterable[LatchChange]) -> Applied:
        """Apply a fold's decisions to one GPU (the same functions the fold computed with)."""
        with self._lock:
            done = apply_all(self._state(uuid), changes)
            self._gpus[uuid] = done.state
            if done.dirty:
                self._mark()
            return done

    def add(self, uuid: str, latch: Latch) -> bool:
        """Add a latch unless one with the same kind and reason exists. True when added."""
        return bool(self.apply(uuid, [AddLatch(latch)]).added)

    def remove(self, uuid: str, kind: str, reason: str | None = None) -> bool:
        return self.apply(uuid, [RemoveLatch(kind, reason)]).dirty

    def forget(self, uuid: str) -> None:
        """Drop a GPU that left the inventory and holds no latch (its baseline goes too)."""
        with self._lock:
            st = self._gpus.get(uuid)
            if st is not None and not st.latches:
                del self._gpus[uuid]
                self._mark()

    def clear(self, uuid: str, *, before: float | None = None) -> list[Latch]:
        """Drop the latches of a GPU: all of them (``before`` None: the node rebooted), or only
        those set at or before wall time ``before``. Returns what was cleared."""
        with self._lock:
            done = clear_latches(self._state(uuid), before=before)
            self._gpus[uuid] = done.state
            if done.dirty:
                self._mark()
            return list(done.cleared)

    def clear_on_reset(self, uuid: str) -> list[Latch]:
        """A reset was observed against the current baseline: clear the latches set at or
        before that baseline was sampled (none when its time is unknown: fail closed)."""
        return list(self.apply(uuid, [ClearOnReset()]).cleared)

    def observe(self, uuid: str, *, at: float | None = None, **values: int | None) -> None:
        """Record a sample's values (taken at wall time ``at``) as the new baseline."""
        self.apply(uuid, [ObserveSample.of(at, **values)])
