"""Bad scenario files: alias bombs, deep nesting, empty files, typos in the shape.

Each test writes the file as a user (or an attacker) would and asserts what a user sees: the
bad document is reported in one bounded log line naming the key, the previous scenario stays,
the watcher keeps watching (a later valid Xid 79 is seen), and no phantom GPU appears.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sidecar.core.values import Severity
from sidecar.runtime import watch
from sidecar.testing import await_until
from sidecar.testing.gpu import U0, Harness, fast_config, gpu

BOMB = """\
gpus: [{index: 0}]
canary:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  mode: *g
"""
DEEP = "gpus: " + "[" * 20000 + "]" * 20000 + "\n"
MAX_LOG_CHARS = 1000


class NoInotify:
    def __init__(self, *_args: object, **_kw: object) -> None:
        raise OSError("inotify disabled by the test")


@pytest.fixture(params=["inotify", "poll"])
async def h(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    if request.param == "poll":
        monkeypatch.setattr(watch, "InotifyWatcher", NoInotify)
    harness = Harness(tmp_path, fast_config())
    yield harness
    await harness.stop()


def write_text(h: Harness, text: str) -> None:
    tmp = h.path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(h.path)


async def rejected(caplog: pytest.LogCaptureFixture, fragment: str) -> None:
    """The positive witness: the sidecar read the bad document and logged the problem."""

    def logged() -> bool:
        return any(
            "scenario file ignored" in r.getMessage() and fragment in str(getattr(r, "error", ""))
            for r in caplog.records
        )

    await await_until(logged, timeout=5.0, what=f"a 'scenario file ignored' log naming {fragment!r}")


async def xid79_still_seen(h: Harness, uuid: str = U0) -> None:
    """The watcher survived: a later valid scenario with Xid 79 reaches the GPU condition."""
    h.write({"gpus": [gpu(0, uuid=uuid, xid=[79])]})
    r = await h.reason(f"gpu/{uuid}/xid", "XidFatal79", within=5.0)
    assert r.severity is Severity.FATAL


def assert_logs_bounded(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage() + " ".join(str(v) for v in record.__dict__.values())
        assert len(text) < MAX_LOG_CHARS * 4, f"unbounded log line: {text[:200]}..."
        assert len(str(getattr(record, "error", ""))) <= MAX_LOG_CHARS
        assert "Exception in callback" not in record.getMessage()
        assert record.exc_info is None, "a bad scenario is reported without a traceback"


async def test_deep_nesting_is_reported_and_the_watcher_survives(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """20k levels (killed the poll watcher for good; an inotify callback traceback)."""
    h.write({"gpus": [gpu(0, temperature_c=88)]})
    await h.start()
    await h.reason(f"gpu/{U0}/thermal", "ThermalSlowdown")
    write_text(h, DEEP)
    await rejected(caplog, "nested deeper than")
    assert h.sink.latest[f"gpu/{U0}/thermal"].reason == "ThermalSlowdown", "previous kept"
    await xid79_still_seen(h)
    assert_logs_bounded(caplog)


async def test_alias_bomb_is_refused_quickly_and_bounded(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A 400-byte alias bomb under canary: is refused before it expands; logs stay small."""
    h.write({"gpus": [gpu(0)]})
    await h.start()
    await h.healthy(f"gpu/{U0}/xid")
    write_text(h, BOMB)
    await rejected(caplog, "expands to more than")
    assert "canary" not in h.scenario.current()
    await xid79_still_seen(h)
    assert_logs_bounded(caplog)


async def test_empty_file_keeps_the_previous_scenario_no_phantom_gpu(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A truncated file (what `>` leaves) is 'not written yet': no default GPU-sim-0 appears."""
    h.write({"gpus": [gpu(0, uuid="GPU-real-a")]})
    await h.start()
    await h.healthy("gpu/GPU-real-a/xid")
    h.path.write_text("", encoding="utf-8")  # truncate in place, as `>` does
    await rejected(caplog, "empty")
    await xid79_still_seen(h, uuid="GPU-real-a")
    phantom = [r.name for r in h.sink.history if U0 in r.name]
    assert phantom == [], f"phantom default GPU reported: {phantom[:3]}"


async def test_empty_file_at_start_is_not_ready_until_written(h: Harness) -> None:
    """An empty scenario at start: NVML unavailable (gating), never the default GPU."""
    h.path.write_text("", encoding="utf-8")
    await h.start()
    nvml = await h.until("nvml", lambda r: not r.ok)
    assert nvml.severity >= Severity.CRITICAL and "readiness" in nvml.gates
    assert "not written yet" in nvml.message
    assert not [r.name for r in h.sink.history if U0 in r.name]
    h.write({"gpus": [gpu(0, uuid="GPU-real-a")]})
    await h.healthy("gpu/GPU-real-a/xid", within=5.0)
    await h.until("nvml", lambda r: r.ok, within=5.0)
    assert not [r.name for r in h.sink.history if U0 in r.name]


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"gpus": [{"xid": 79}]}, "gpus[0].xid: must be a list of Xid codes"),
        ({"gpu": [{"xid": [79]}]}, "gpu: unknown top-level key"),
        ({"gpus": [{}], "canary": {"mode": "hang", "dely_ms": 5}}, "canary.dely_ms: unknown key"),
        ({"gpus": [{}], "canary": {"mode": "explode"}}, "canary.mode: must be one of"),
    ],
)
async def test_scenario_typos_are_rejected_naming_the_key(
    h: Harness, caplog: pytest.LogCaptureFixture, doc: dict[str, object], fragment: str
) -> None:
    """`xid: 79` (was a TypeError traceback, no fault), a top-level `gpu:` (silently ignored):
    rejected whole, logged once naming the key, the previous scenario stays."""
    h.write({"gpus": [gpu(0, temperature_c=88)]})
    await h.start()
    await h.reason(f"gpu/{U0}/thermal", "ThermalSlowdown")
    with caplog.at_level(logging.WARNING):
        h.write(doc)
        await rejected(caplog, fragment)
        assert h.sink.latest[f"gpu/{U0}/thermal"].reason == "ThermalSlowdown", "previous kept"
        await xid79_still_seen(h)
    ignored = [r for r in caplog.records if "scenario file ignored" in r.getMessage()]
    assert len(ignored) == 1, [r.getMessage() for r in ignored]
    assert_logs_bounded(caplog)
