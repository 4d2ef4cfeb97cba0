"""The latch state file's document: bounded read, strict parse, render (no lock, no state).

A document that does not parse (not UTF-8, not JSON, too large, an unknown ``version``, a wrong
shape) raises :class:`CorruptStateError`; :class:`sidecar.gpu.latches.LatchStore` then sets the
file aside and fails closed.
"""

from __future__ import annotations

import errno
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from sidecar.core.errors import SidecarError
from sidecar.gpu.latchstate import GpuLatchState, Latch, Observed
from sidecar.runtime.safeload import NotRegularFileError, TooLargeError, read_bounded_bytes

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 had no Observed.at (its latches never clear by a reset)
MAX_FILE_BYTES = 1024 * 1024
MAX_TEXT_CHARS = 4096


class CorruptStateError(SidecarError, ValueError):
    """The state file's content is not a state document this version understands."""


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


def short(value: object, limit: int = 200) -> str:
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
        raise CorruptStateError(f"{where}: unknown key {short(unknown[0], 60)!r}")
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
        raise CorruptStateError(f"not JSON: {short(exc, 120)}") from None
    if not isinstance(doc, dict):
        raise CorruptStateError("expected a JSON object")
    version = doc.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CorruptStateError(
            f"unknown version {short(version, 40)!r} (this sidecar reads {list(READABLE_VERSIONS)})"
        )
    boot_id = _text("boot_id", doc.get("boot_id", ""))
    gpus = doc.get("gpus")
    if not isinstance(gpus, dict):
        raise CorruptStateError("gpus: expected a mapping")
    out: dict[str, GpuLatchState] = {}
    for uuid, raw in gpus.items():
        where = f"gpus.{short(uuid, 60)}"
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
        out[uuid] = GpuLatchState(latches=tuple(latches), observed=observed)
    return out, boot_id


def render_state(gpus: Mapping[str, GpuLatchState], *, boot_id: str, written_at: float) -> bytes:
    """The document :func:`parse_state` reads back."""
    doc = {
        "version": STATE_VERSION,
        "boot_id": boot_id,
        "written_at": written_at,
        "gpus": {
            uuid: {
                "latches": [asdict(latch) for latch in st.latches],
                "observed": asdict(st.observed),
            }
            for uuid, st in gpus.items()
        },
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
