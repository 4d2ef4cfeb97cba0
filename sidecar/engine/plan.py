"""Peek at a TensorRT plan's header without deserialising it (advisory).

The plan format is not documented. The layout used here is the one NVIDIA's own ``trtexec
--getPlanVersionOnly`` reads (``samples/common/sampleEngines.cpp::printPlanVersion``, identical
from TensorRT 9.0 to 11.1; plans from 8.6 on):

- bytes 0-3: the plan file tag ``b"ftrt"`` (``0x74727466`` little-endian);
- bytes 4-7: a little-endian uint32 layout selector; only ``0`` is known;
- bytes 24-27: major, minor, patch, build of the TensorRT that built the plan (layout 0).

A wrong tag means "will not deserialise" (TensorRT's own ``magicTag`` assertion). A known tag
with an unknown layout is *inconclusive*: the caller falls through to real deserialisation (the
canary worker). Files that wrap a plan behind an ``int32`` length + JSON metadata prefix
(Ultralytics ``.engine`` exports) are recognised and reported as such: raw
``deserialize_cuda_engine`` rejects them. Only the first bytes are read, never the whole file.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

PLAN_MAGIC = b"ftrt"
HEADER_BYTES = 28
VERSION_OFFSET = 24
# The largest metadata prefix accepted when looking for a wrapped plan (Ultralytics JSON).
MAX_WRAPPER_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class PlanHeader:
    """What the first bytes of a file say. ``is_plan`` is True only for a bare plan tag.

    ``tensorrt_version`` is ``"major.minor.patch.build"`` when the layout is known, else None.
    ``wrapper`` names a recognised non-plan prefix (``"json-metadata"``) with the plan behind it.
    """

    is_plan: bool
    magic: bytes
    layout: int | None = None
    tensorrt_version: str | None = None
    wrapper: str | None = None
    wrapper_bytes: int = 0
    problem: str | None = None

    @property
    def layout_known(self) -> bool:
        return self.layout == 0 and self.tensorrt_version is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "is_plan": self.is_plan,
            "magic": self.magic.hex(),
            "layout": self.layout,
            "tensorrt_version": self.tensorrt_version,
            "wrapper": self.wrapper,
            "wrapper_bytes": self.wrapper_bytes,
            "problem": self.problem,
        }


def parse_plan_header(data: bytes) -> PlanHeader:
    """Interpret the first bytes of a file (at least :data:`HEADER_BYTES` for a version)."""
    magic = bytes(data[:4])
    if magic != PLAN_MAGIC:
        if not data:
            return PlanHeader(False, magic, problem="file is empty")
        return PlanHeader(False, magic, problem=f"first bytes are {magic.hex()} (expected 'ftrt' plan tag)")
    if len(data) < 8:
        return PlanHeader(True, magic, problem="header truncated before the layout field")
    (layout,) = struct.unpack_from("<I", data, 4)
    if layout != 0:
        return PlanHeader(
            True, magic, layout=layout, problem=f"unknown header layout {layout} (inconclusive)"
        )
    if len(data) < HEADER_BYTES:
        return PlanHeader(True, magic, layout=layout, problem="header truncated before version")
    v = data[VERSION_OFFSET:HEADER_BYTES]
    return PlanHeader(True, magic, layout=layout, tensorrt_version=f"{v[0]}.{v[1]}.{v[2]}.{v[3]}")


def _wrapped(path: Path, head: bytes) -> PlanHeader | None:
    """Recognise ``int32 length + JSON + plan`` (Ultralytics); None when it is not that."""
    if len(head) < 4:
        return None
    (length,) = struct.unpack_from("<i", head, 0)
    if not 2 <= length <= MAX_WRAPPER_BYTES:
        return None
    with path.open("rb") as f:
        f.seek(4)
        meta = f.read(length)
        inner = f.read(HEADER_BYTES)
    if len(meta) != length:
        return None
    try:
        json.loads(meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if inner[:4] != PLAN_MAGIC:
        return None
    hdr = parse_plan_header(inner)
    return PlanHeader(
        False,
        head[:4],
        layout=hdr.layout,
        tensorrt_version=hdr.tensorrt_version,
        wrapper="json-metadata",
        wrapper_bytes=4 + length,
        problem=(
            f"a {length}-byte JSON metadata prefix precedes the plan (Ultralytics-style); "
            "TensorRT cannot deserialise the file as is"
        ),
    )


def read_plan_header(path: Path) -> PlanHeader:
    """Read the first bytes of ``path`` (raises ``OSError`` when unreadable)."""
    with path.open("rb") as f:
        head = f.read(HEADER_BYTES)
    hdr = parse_plan_header(head)
    if not hdr.is_plan and head:
        wrapped = _wrapped(path, head)
        if wrapped is not None:
            return wrapped
    return hdr


def make_plan_header(version: tuple[int, int, int, int], *, layout: int = 0) -> bytes:
    """The first :data:`HEADER_BYTES` of a plan-like file with this layout (tests, demo)."""
    head = bytearray(HEADER_BYTES)
    head[0:4] = PLAN_MAGIC
    struct.pack_into("<I", head, 4, layout)
    head[VERSION_OFFSET:HEADER_BYTES] = bytes(version)
    return bytes(head)


def _parts(version: str) -> tuple[int, ...] | None:
    try:
        parts = tuple(int(p) for p in version.strip().split(".") if p != "")
    except ValueError:
        return None
    return parts or None


@dataclass(frozen=True, slots=True)
class VersionVerdict:
    """``compatible`` is True / False, or None when nothing can be said (inconclusive)."""

    compatible: bool | None
    message: str


def compare_versions(plan: str, runtime: str, *, version_compatible: bool) -> VersionVerdict:
    """Would a runtime of version ``runtime`` load a plan built by ``plan``? (advisory)

    Plans that are not version-compatible need the exact build version (major, minor, patch,
    build; only the fields both sides give are compared). Version-compatible plans run on the
    same major at the same or a later minor, and 10→11 and 8→10 across majors (11.4 support
    matrix); an older runtime never loads a newer plan.
    """
    p, r = _parts(plan), _parts(runtime)
    if p is None or r is None:
        return VersionVerdict(None, f"cannot compare versions {plan!r} and {runtime!r}")
    if not version_compatible:
        n = min(len(p), len(r), 4)
        if p[:n] == r[:n]:
            return VersionVerdict(True, f"plan {plan} matches runtime {runtime}")
        return VersionVerdict(
            False,
            f"plan built by TensorRT {plan}, runtime is {runtime}: a plan that is not "
            "version-compatible needs the exact same version",
        )
    if p[0] == r[0]:
        if r[:2] >= p[:2]:
            return VersionVerdict(True, f"version-compatible plan {plan} runs on {runtime}")
        return VersionVerdict(False, f"version-compatible plan {plan} is newer than runtime {runtime}")
    if (p[0], r[0]) in ((10, 11), (8, 10)):
        return VersionVerdict(True, f"version-compatible plan {plan} runs on {runtime}")
    return VersionVerdict(
        False, f"version-compatible plan {plan} cannot run on TensorRT {runtime} (major versions)"
    )
