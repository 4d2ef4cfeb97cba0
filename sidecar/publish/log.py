"""Structured logs: one JSON object per line on stderr (text format optional).

Fields passed with ``extra={...}`` become top-level keys. Transitions are logged at info,
single results at debug, so a healthy sidecar is quiet.

Every line is bounded: a value that came from a file or a request is never logged whole.
Each field (and the message) is cut at ``MAX_FIELD_CHARS`` with a ``...[+N chars]`` marker, a
nested value is rendered at most ``MAX_DEPTH`` levels deep, a traceback keeps its head and
tail, and a line that is still longer than ``MAX_LINE_CHARS`` (bytes, in the JSON format:
its output is ASCII) is shrunk field by field until it fits.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

MAX_FIELD_CHARS = 1024
MAX_EXC_CHARS = 4096
MAX_LINE_CHARS = 8192
MAX_DEPTH = 8
_KEY_CHARS = 64  # an extra's key is code, but a dict inside a value may carry file keys


def clip_text(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` cut at ``limit`` characters, with a marker saying how much was dropped."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[+{len(text) - limit} chars]"


def _clip_tail(text: str, limit: int) -> str:
    """Keep the head and the tail (a traceback's last lines say what happened)."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    return f"{text[:head]}\n...[{len(text) - limit} chars cut]...\n{text[-tail:]}"


def _render(value: Any, depth: int) -> Iterator[str]:
    """Text of ``value`` piece by piece, so a caller can stop after a bounded amount (an
    alias bomb or a deep nest is never walked whole)."""
    if isinstance(value, str):
        yield json.dumps(value[: MAX_FIELD_CHARS + 1])
    elif value is None or isinstance(value, bool | int | float):
        yield json.dumps(value) if not isinstance(value, int) or abs(value) < 10**100 else '"<int>"'
    elif depth >= MAX_DEPTH:
        yield "..."
    elif isinstance(value, Mapping):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield ("," if i else "") + json.dumps(str(k)[:_KEY_CHARS]) + ":"
            yield from _render(v, depth + 1)
        yield "}"
    elif isinstance(value, list | tuple | set | frozenset):
        yield "["
        for i, v in enumerate(value):
            if i:
                yield ","
            yield from _render(v, depth + 1)
        yield "]"
    else:
        yield json.dumps(clip_text(str(value)))


def bounded_value(value: Any, limit: int = MAX_FIELD_CHARS) -> Any:
    """A JSON-able stand-in of ``value`` whose encoding is at most about ``limit`` chars:
    the value itself when it is small, else a cut text of it."""
    if isinstance(value, str):
        return clip_text(value, limit)
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**100 else "<int>"
    pieces: list[str] = []
    size = 0
    complete = True
    for piece in _render(value, 0):
        pieces.append(piece)
        size += len(piece)
        if size > limit or piece == "...":
            complete = False
            if size > limit:
                break
    text = "".join(pieces)
    if complete:
        if isinstance(value, Mapping):
            return {str(k): bounded_value(v, limit) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [bounded_value(v, limit) for v in value]
        return text if not isinstance(value, set | frozenset) else json.loads(text)
    return clip_text(text, limit)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


def _message(record: logging.LogRecord) -> str:
    try:
        msg = record.getMessage()
    except Exception:  # a bad %-format must not lose the line
        msg = str(record.msg)
    return clip_text(msg)


def _rfc3339(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _fit(build: Any, extras: dict[str, Any], line_limit: int) -> str:
    """Encode with ``build(extras)``; while the line is too long, cut every extra shorter."""
    limit = MAX_FIELD_CHARS
    clipped = {k: bounded_value(v, limit) for k, v in extras.items()}
    line: str = build(clipped)
    while len(line.encode()) > line_limit and limit > 16:
        limit //= 4
        clipped = {k: bounded_value(v, limit) for k, v in extras.items()}
        line = build(clipped)
    if len(line.encode()) > line_limit:  # too many fields: keep what fits
        line = build({"truncated": True})
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base: dict[str, Any] = {
            "ts": _rfc3339(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        exc = _clip_tail(self.formatException(record.exc_info), MAX_EXC_CHARS) if record.exc_info else None

        def build(extras: dict[str, Any]) -> str:
            out = dict(base)
            for key, value in extras.items():
                out.setdefault(str(key)[:_KEY_CHARS], value)
            if exc is not None:
                out["exc"] = exc
            return json.dumps(out, default=str, separators=(",", ":"))

        return _fit(build, _fields(record), MAX_LINE_CHARS)


def _text_value(value: Any) -> str:
    if value == "":
        return '""'  # service="" (the overall service) must not read as a missing value
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    # one record, one line: a value cannot start a line of its own
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


class TextFormatter(logging.Formatter):
    """``<RFC 3339 UTC time> <level> <logger>: <message> key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        head = f"{_rfc3339(record)} {record.levelname.lower():7} {record.name}: {_message(record)}"
        head = head.replace("\n", "\\n")
        exc = _clip_tail(self.formatException(record.exc_info), MAX_EXC_CHARS) if record.exc_info else ""

        def build(extras: dict[str, Any]) -> str:
            pairs = " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
            line = f"{head} {pairs}".rstrip()
            return f"{line}\n{exc}" if exc else line

        return _fit(build, _fields(record), MAX_LINE_CHARS)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_sidecar", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler._sidecar = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    # grpc's own asyncio internals are chatty at debug
    logging.getLogger("grpc").setLevel(max(logging.INFO, root.level))
