"""Every log line is bounded, whatever a file or a request put into a field (issue #9 item 4)."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from sidecar.publish.log import MAX_LINE_CHARS, JsonFormatter, TextFormatter


@pytest.fixture(params=["json", "text"])
def capture(request: pytest.FixtureRequest) -> Iterator[tuple[str, logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if request.param == "json" else TextFormatter())
    logger = logging.getLogger(f"test.log-bounds.{request.param}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield request.param, logger, stream
    logger.removeHandler(handler)


def _bomb() -> list[object]:
    """What a YAML alias bomb parses to: 9 levels of 9 references to the same list."""
    level: list[object] = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9
    return level


def _deep(n: int) -> dict[str, object]:
    d: dict[str, object] = {}
    for _ in range(n):
        d = {"a": d}
    return d


HUGE = {
    "string": "x" * 5_000_000,
    "bomb": _bomb(),
    "deep": _deep(50_000),
    "many": {f"k{i}": "v" * 100 for i in range(10_000)},
}


@pytest.mark.parametrize("kind", sorted(HUGE))
def test_a_huge_field_gives_a_bounded_line_with_a_marker(
    capture: tuple[str, logging.Logger, io.StringIO], kind: str
) -> None:
    """A 5 MB string, an alias bomb, a 50k-deep nest or 10k keys: one line of at most
    MAX_LINE_CHARS bytes, which says it was cut."""
    fmt, logger, stream = capture
    logger.info("scenario rejected " + "m" * 100_000, extra={"value": HUGE[kind], "file": "s.yaml"})
    out = stream.getvalue()
    lines = out.splitlines()
    assert len(lines) == 1
    assert len(lines[0].encode()) <= MAX_LINE_CHARS
    assert "...[+" in lines[0] or "..." in lines[0]
    assert "scenario rejected mmm" in lines[0]
    if fmt == "json":
        record = json.loads(lines[0])
        assert record["msg"].startswith("scenario rejected ")
        assert record["level"] == "info"


def test_small_values_stay_structured_in_json() -> None:
    """Bounding does not change what a normal line says."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.log-bounds.small")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.warning(
            "condition changed",
            extra={"labels": {"uuid": "GPU-1"}, "problems": ["a: bad", "b: bad"], "n": 3, "ok": None},
        )
    finally:
        logger.removeHandler(handler)
    record = json.loads(stream.getvalue())
    assert record["labels"] == {"uuid": "GPU-1"}
    assert record["problems"] == ["a: bad", "b: bad"]
    assert record["n"] == 3 and record["ok"] is None


def test_text_format_has_an_rfc3339_utc_timestamp_and_one_line_per_record() -> None:
    """Text lines start with the time (UTC, RFC 3339); a newline in a value cannot forge a line."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("test.log-bounds.text")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        logger.info("hello", extra={"detail": "a\nlevel=error fake line"})
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert len(out.splitlines()) == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info +test\.log-bounds\.text: hello ", out)


def test_text_format_shows_an_empty_value_as_empty_quotes() -> None:
    """The overall service "" reads `service=""` in the text format, not `service=`."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = logging.getLogger("test.log-bounds.empty")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        logger.info("service changed", extra={"service": "", "to": "SERVING"})
    finally:
        logger.removeHandler(handler)
    assert 'service="" to=SERVING' in stream.getvalue()
