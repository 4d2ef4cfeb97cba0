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
intact. The store never fails open (``health``, reported as the gating ``gpu/state``
condition):

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
import errno
import json
import logging
import math
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from sidecar.core.errors import SidecarError
from sidecar.runtime.safeload import NotRegularFileError, TooLargeError, read_bounded_bytes

log = logging.getLogger(__name__)

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 had no Observed.at (its latches never clear by a reset)
MAX_FILE_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 4096
MAX_ASIDE = 3
ASIDE_INFIX = ".corrupt-"

REASON_CORRUPT = "LatchStoreCorrupt"
REASON_UNREADABLE = "LatchStoreUnreadable"
REASON_UNWRITABLE = "LatchStoreUnwritable"


@dataclass(frozen=True, slots=True)
class Latch:
    """One sticky fatal finding on one GPU."""

    kind: str  # "xid", "ecc", "remap", "lost"
    reason: str  # e.g. "XidFatal79", "EccUncorrectable"
    message: str
    scope: str = "gpu"  # "gpu" or "node"
    code: int = 0  # the Xid, when kind == "xid"
    since: float = 0.0  # wall time (for a finding of a sample: when that sample was taken)


@dataclass(slots=True)
class Observed:
    """Last values seen for one GPU: the baselines that make a reset observable."""

    volatile_uncorrected: int | None = None
    volatile_corrected: int | None = None
    reset_count: int | None = None
    recovery_action: int | None = None
    at: float | None = None  # wall time the sample showing these values was taken


@dataclass(slots=True)
class GpuLatchState:
    latches: list[Latch] = field(default_factory=list)
    observed: Observed = field(default_factory=Observed)


@dataclass(frozen=True, slots=True)
class StoreProblem:
    """Why the latch store cannot be trusted right now (a gating condition)."""

    reason: str  # REASON_CORRUPT, REASON_UNREADABLE, REASON_UNWRITABLE
    message: str


class CorruptStateError(SidecarError, ValueError):
    """The state file's content is not a state document this version understands."""


def read_boot_id(path: Path = Path("/proc/sys/kernel/random/boot_id")) -> str:
    """The kernel's boot id (changes at every boot), or "" when unreadable."""
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def read_state_bytes(path: Path) -> bytes:
    """The state file's bytes, at most :data:`MAX_FILE_BYTES` (the one read path of the store).

    Raises FileNotFoundError, OSError (also for what is not a regular file: a FIFO or a
    device never blocks the read), or CorruptStateError for a larger file."""
    try:
        return read_bounded_bytes(path, MAX_FILE_BYTES)
    except NotRegularFileError as exc:
        raise OSError(errno.EINVAL, "not a regular file", str(path)) from exc
    except TooLargeError as exc:
        raise CorruptStateError(f"larger than {MAX_FILE_BYTES} bytes") from exc


def _short(value: object, limit: int = 200) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _text(where: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
        raise CorruptStateError(f"{where}: expected a string of at most {MAX_TEXT_CHARS} chars")
    return value


def _int_or_none(where: str, value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise CorruptStateError(f"{where}: expected an integer or null")


def _wall(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CorruptStateError(f"{where}: expected a finite number")
    return float(value)


def _mapping(where: str, value: Any, allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CorruptStateError(f"{where}: expected a mapping")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise CorruptStateError(f"{where}: unknown key {_short(unknown[0], 60)!r}")
    return value


_LATCH_KEYS = frozenset(f.name for f in fields(Latch))
_OBSERVED_KEYS = frozenset(f.name for f in fields(Observed))


def parse_state(data: bytes) -> tuple[dict[str, GpuLatchState], str]:
    """Parse a state document: (latches per GPU, boot id). Raises CorruptStateError."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CorruptStateError(f"not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise CorruptStateError("nested too deeply") from None
    except ValueError as exc:
        raise CorruptStateError(f"not JSON: {_short(exc, 120)}") from None
    if not isinstance(doc, dict):
        raise CorruptStateError("expected a JSON object")
    version = doc.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CorruptStateError(
            f"unknown version {_short(version, 40)!r} (this sidecar reads {list(READABLE_VERSIONS)})"
        )
    boot_id = _text("boot_id", doc.get("boot_id", ""))
    gpus = doc.get("gpus")
    if not isinstance(gpus, dict):
        raise CorruptStateError("gpus: expected a mapping")
    out: dict[str, GpuLatchState] = {}
    for uuid, raw in gpus.items():
        where = f"gpus.{_short(uuid, 60)}"
        _text(where, uuid)
        entry = _mapping(where, raw, frozenset({"latches", "observed"}))
        items = entry.get("latches", [])
        if not isinstance(items, list):
            raise CorruptStateError(f"{where}.latches: expected a list")
        latches = []
        for i, item in enumerate(items):
            lw = f"{where}.latches[{i}]"
            x = _mapping(lw, item, _LATCH_KEYS)
            if not {"kind", "reason", "message"} <= x.keys():
                raise CorruptStateError(f"{lw}: kind, reason and message are required")
            code = _int_or_none(f"{lw}.code", x.get("code", 0))
            latches.append(
                Latch(
                    kind=_text(f"{lw}.kind", x["kind"]),
                    reason=_text(f"{lw}.reason", x["reason"]),
                    message=_text(f"{lw}.message", x["message"]),
                    scope=_text(f"{lw}.scope", x.get("scope", "gpu")),
                    code=code or 0,
                    since=_wall(f"{lw}.since", x.get("since", 0.0)),
                )
            )
        ob = _mapping(f"{where}.observed", entry.get("observed", {}), _OBSERVED_KEYS)
        at = ob.get("at")
        observed = Observed(
            **{k: _int_or_none(f"{where}.observed.{k}", ob.get(k)) for k in _OBSERVED_KEYS - {"at"}},
            at=None if at is None else _wall(f"{where}.observed.at", at),
        )
        out[uuid] = GpuLatchState(latches=latches, observed=observed)
    return out, boot_id


class LatchStore:
    """The persisted latches of every GPU. Thread-safe (listener thread + event loop)."""

    def __init__(self, path: Path, *, boot_id: str = "") -> None:
        self.path = path
        self.boot_id = boot_id
        self.previous_boot_id = ""
        self._lock = threading.RLock()
        self._gpus: dict[str, GpuLatchState] = {}
        self._dirty = False
        self._unreadable: str | None = None  # the file exists but could not be read
        self._unwritable: str | None = None
        self._corrupt: str | None = None  # why the last corrupt file was set aside
        self._aside_failed: str | None = None  # a corrupt file that could not be moved aside
        self._read: set[tuple[str, Latch]] = set()  # every latch read from the file

    # -- load / save --------------------------------------------------------------------------

    def load(self) -> None:
        """Read the file. A missing file is an empty state; an unreadable one is kept (and
        retried); a corrupt one is set aside. Marks the state dirty so the first ``save``
        proves the state dir is writable."""
        with self._lock:
            self._dirty = True
            self._load_locked()

    def _load_locked(self) -> bool:
        """True when the file was read (or is absent)."""
        try:
            data = read_state_bytes(self.path)
            gpus, boot_id = parse_state(data)
        except (FileNotFoundError, NotADirectoryError):  # no file there (then saves tell)
            self._unreadable = None
            return True
        except CorruptStateError as exc:
            self._unreadable = None
            self._set_aside(str(exc))
            return True
        except OSError as exc:
            if self._unreadable is None:
                log.error(
                    "GPU latch state file unreadable; not overwritten, readiness held",
                    extra={"path": str(self.path), "error": _short(exc)},
                )
            self._unreadable = f"state file {self.path} unreadable: {_short(exc)}"
            return False
        for uuid, st in gpus.items():  # merge: latches set meanwhile stay
            mine = self.gpu(uuid)
            for latch in st.latches:
                self._read.add((uuid, latch))
                if not any(x.kind == latch.kind and x.reason == latch.reason for x in mine.latches):
                    mine.latches.append(latch)
            if mine.observed == Observed():
                mine.observed = st.observed
        self.previous_boot_id = boot_id
        if self._unreadable is not None:
            log.info("GPU latch state file readable again", extra={"path": str(self.path)})
        self._unreadable = None
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
        self._corrupt = why
        try:
            os.rename(self.path, aside)
        except OSError as exc:
            self._aside_failed = f"could not be renamed aside: {_short(exc)}"
            log.error(
                "GPU latch state file corrupt and could not be kept aside; not overwritten",
                extra={"path": str(self.path), "error": why, "rename_error": _short(exc)},
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
            self._dirty = True

    def save(self) -> None:
        """Write atomically if anything changed; retry reading a file that was unreadable
        first (it is never overwritten unread)."""
        with self._lock:
            if self._unreadable is not None and not self._load_locked():
                return
            if self._aside_failed is not None:
                if self.path.exists():
                    return  # the corrupt file is still there: never overwrite it
                self._aside_failed = None
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
                if self._unwritable is None:
                    log.error(
                        "GPU latch state file not writable; readiness held until a write succeeds",
                        extra={"path": str(self.path), "error": _short(exc)},
                    )
                self._unwritable = f"state file {self.path} not writable: {_short(exc)}"
                return
            self._dirty = False
            if self._unwritable is not None:
                log.info("GPU latch state file writable again", extra={"path": str(self.path)})
            self._unwritable = None

    def health(self) -> StoreProblem | None:
        """Why the store cannot be trusted now (the worst problem), or None. Lists the state
        dir (call it off the event loop)."""
        with self._lock:
            if self._unreadable is not None:
                return StoreProblem(REASON_UNREADABLE, self._unreadable)
            if self._aside_failed is not None:
                return StoreProblem(
                    REASON_CORRUPT,
                    f"state file {self.path} is corrupt ({self._corrupt}) and {self._aside_failed}",
                )
            aside = self._aside_files()
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
            keep = [x for x in st.latches if not (x.kind == kind and reason in (None, x.reason))]
            changed = len(keep) != len(st.latches)
            st.latches = keep
            self._dirty |= changed
            return changed

    def forget(self, uuid: str) -> None:
        """Drop a GPU that left the inventory and holds no latch (its baseline goes too)."""
        with self._lock:
            st = self._gpus.get(uuid)
            if st is not None and not st.latches:
                del self._gpus[uuid]
                self._dirty = True

    def clear(self, uuid: str, *, before: float | None = None) -> list[Latch]:
        """Drop the latches of a GPU: all of them (``before`` None: the node rebooted), or only
        those set at or before wall time ``before``. Returns what was cleared."""
        with self._lock:
            st = self.gpu(uuid)
            cleared = [x for x in st.latches if before is None or x.since <= before]
            st.latches = [x for x in st.latches if not (before is None or x.since <= before)]
            self._dirty |= bool(cleared)
            return cleared

    def clear_on_reset(self, uuid: str) -> list[Latch]:
        """A reset was observed against the current baseline: clear the latches set at or
        before that baseline was sampled (none when its time is unknown: fail closed)."""
        with self._lock:
            at = self.gpu(uuid).observed.at
            return self.clear(uuid, before=-math.inf if at is None else at)

    def observe(self, uuid: str, *, at: float | None = None, **values: int | None) -> None:
        """Record a sample's values (taken at wall time ``at``) as the new baseline."""
        with self._lock:
            st = self.gpu(uuid)
            obs = st.observed
            for key, value in values.items():
                if getattr(obs, key) != value:
                    setattr(obs, key, value)
                    self._dirty = True
            if at is not None and (obs.at is None or at > obs.at):
                # persisted when it changes what a reset may clear (not at every poll)
                if any(obs.at is None or x.since > obs.at for x in st.latches):
                    self._dirty = True
                obs.at = at
