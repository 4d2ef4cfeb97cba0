"""Engine file observation: stat stamps, stability, and SHA-256 with a deadline and a rate cap.

Hashing a multi-GB plan takes seconds and reads the whole file: it runs in a worker thread,
stops at its own deadline (a cancel flag checked between chunks, so the thread really ends),
and can be throttled so the sidecar never competes with the main server for the volume.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat as statmod
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sidecar.core.errors import SidecarError

CHUNK_BYTES = 4 << 20
GB = 1e9


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What ``stat`` says about a file; any change of these means "different file or content"."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    device: int


MISSING = "does not exist"
DANGLING = "a dangling symlink"

_KINDS = (
    (statmod.S_ISDIR, "a directory"),
    (statmod.S_ISCHR, "a character device"),
    (statmod.S_ISBLK, "a block device"),
    (statmod.S_ISFIFO, "a FIFO (named pipe)"),
    (statmod.S_ISSOCK, "a socket"),
)


def mode_kind(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a regular file", "a directory", "a FIFO" ...)."""
    if statmod.S_ISREG(mode):
        return "a regular file"
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def path_problem(path: Path) -> str | None:
    """None when ``path`` is (or links to) a regular file; else what it is, in words:
    ``MISSING``, "a directory", "a character device", "a FIFO (named pipe)", "a symlink
    loop", "a dangling symlink" ... Only stats: never opens, so it cannot block on a FIFO."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        try:
            if statmod.S_ISLNK(os.lstat(path).st_mode):
                return DANGLING
        except OSError:
            pass
        return MISSING
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop"
        return f"not accessible ({exc.strerror or exc})"
    if statmod.S_ISREG(st.st_mode):
        return None
    return mode_kind(st.st_mode)


def stat_stamp(path: Path) -> FileStamp | None:
    """The file's stamp, or None when it does not exist or is not a regular file (a
    symlink loop, an unreadable folder: see :func:`path_problem` for what it is)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not statmod.S_ISREG(st.st_mode):
        return None
    return FileStamp(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


class HashTimeout(SidecarError):
    """Hashing did not finish before its deadline. ``done`` bytes were read in ``seconds``."""

    def __init__(self, done: int, seconds: float) -> None:
        self.done = done
        self.seconds = seconds
        super().__init__(f"hash stopped after {done} bytes in {seconds:.1f}s")


@dataclass(frozen=True, slots=True)
class HashResult:
    """A finished hash: hex digest, bytes read, wall seconds; cost per GB and MB/s derived."""

    sha256: str
    size: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.size / 1e6 / self.seconds if self.seconds > 0 else 0.0

    @property
    def seconds_per_gb(self) -> float:
        return self.seconds / (self.size / GB) if self.size else 0.0


def sha256_file_blocking(
    path: Path,
    *,
    cancel: threading.Event | None = None,
    max_bytes_per_s: float = 0.0,
    chunk_bytes: int = CHUNK_BYTES,
) -> HashResult:
    """Hash a file in the calling thread. Stops with :class:`HashTimeout` when ``cancel`` is set.

    ``max_bytes_per_s`` > 0 throttles reading to that rate (sleeping between chunks).
    """
    h = hashlib.sha256()
    done = 0
    start = time.monotonic()
    with path.open("rb", buffering=0) as f:
        buf = bytearray(chunk_bytes)
        view = memoryview(buf)
        while True:
            if cancel is not None and cancel.is_set():
                raise HashTimeout(done, time.monotonic() - start)
            n = f.readinto(view)
            if not n:
                break
            h.update(view[:n])
            done += n
            if max_bytes_per_s > 0:
                ahead = done / max_bytes_per_s - (time.monotonic() - start)
                if ahead > 0:
                    # Sleep in short slices so a cancel still stops us promptly.
                    if cancel is not None:
                        cancel.wait(ahead)
                    else:
                        time.sleep(ahead)
    return HashResult(h.hexdigest(), done, time.monotonic() - start)


async def sha256_file(path: Path, *, timeout_s: float, max_bytes_per_s: float = 0.0) -> HashResult:
    """Hash ``path`` in a thread; raise :class:`HashTimeout` after ``timeout_s`` (thread ends)."""
    cancel = threading.Event()
    start = time.monotonic()
    task = asyncio.ensure_future(
        asyncio.to_thread(sha256_file_blocking, path, cancel=cancel, max_bytes_per_s=max_bytes_per_s)
    )
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout_s)
    except TimeoutError:
        cancel.set()
        try:
            await task
        except HashTimeout as exc:
            raise HashTimeout(exc.done, time.monotonic() - start) from None
        raise HashTimeout(0, time.monotonic() - start) from None
    except asyncio.CancelledError:
        cancel.set()
        raise


@dataclass(frozen=True, slots=True)
class Stability:
    """Whether a file stood still over a window: ``stamp`` is the later of the two looks."""

    stable: bool
    stamp: FileStamp | None
    previous: FileStamp | None


async def observe_stability(path: Path, window_s: float, *, previous: FileStamp | None = None) -> Stability:
    """Stat, wait ``window_s``, stat again; stable when nothing changed (not being written).
    The stats run on a thread.

    When ``previous`` (a stamp taken at least ``window_s`` ago) equals the current stamp, the
    wait is skipped: the file already stood still that long.
    """
    first = await asyncio.to_thread(stat_stamp, path)  # a stat on a network volume can hang
    if previous is not None and first == previous and first is not None:
        return Stability(True, first, previous)
    if first is None:
        return Stability(False, None, previous)
    await asyncio.sleep(window_s)
    second = await asyncio.to_thread(stat_stamp, path)
    return Stability(second == first, second, first)
