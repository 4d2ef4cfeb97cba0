"""A ResultObserver (the trend detectors) that raises costs its own observation only: the
result is still published, the submitting check loop never sees the exception, and the
fault is logged once per failure streak, not once per result. Review finding 12."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from sidecar.app import SidecarApp
from sidecar.core.protocols import Check, ResultSink
from sidecar.core.values import CheckResult, Severity

from .conftest import NOT_SERVING, SERVING, AppThread, check, core_config, wait_until

GATES = frozenset({"readiness", "gpu", "gpu/GPU-1"})


class RaisingObserver:
    """Stands in the trends slot; its observe fails until told to heal."""

    name = "trends"

    def __init__(self) -> None:
        self.calls = 0
        self.healed = False

    def checks(self) -> Sequence[Check]:
        return []

    async def start(self, sink: ResultSink) -> None:
        return None

    async def stop(self) -> None:
        return None

    def observe(self, results: Iterable[CheckResult]) -> None:
        self.calls += 1
        if not self.healed:
            raise RuntimeError("observer bug " + "x" * 100_000)


def _failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "result observer failed"]


async def _submit_on_loop(app: AppThread, result: CheckResult) -> None:
    app.app.submit([result])  # on the loop thread, as a check loop submits


def test_a_raising_observer_never_skips_publishing_nor_reaches_the_check_loop(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.app")
    observer = RaisingObserver()
    original = SidecarApp.build_section

    def build(self: SidecarApp, section: str, cfg: Any, registry: Any) -> Any:
        return observer if section == "trends" else original(self, section, cfg, registry)

    monkeypatch.setattr(SidecarApp, "build_section", build)
    app: AppThread = make_app(core_config())
    assert app.app.components == [observer]
    app.submit(CheckResult.passed("gpu/GPU-1/ecc", gates=GATES))
    assert observer.calls == 1  # witness: the observer ran and raised
    wait_until(lambda: check(app.addr, "gpu/GPU-1") == SERVING, timeout=5)
    # a later fatal result, submitted on the loop like a check loop does: no exception there,
    # and it reaches the gRPC verdict
    app.call(
        _submit_on_loop(
            app,
            CheckResult.failed(
                "gpu/GPU-1/ecc", "EccUncorrectable", "ecc", severity=Severity.FATAL, gates=GATES
            ),
        )
    )
    assert observer.calls == 2
    assert check(app.addr, "gpu/GPU-1") == NOT_SERVING
    assert check(app.addr, "readiness") == NOT_SERVING
    # bounded: one line for the failure streak, naming the component, with a clipped message
    failures = _failures(caplog)
    assert len(failures) == 1
    assert getattr(failures[0], "component", None) == "trends"
    assert failures[0].exc_info is not None
    # the observer heals: one line saying so; it fails again: a new streak, one more line
    observer.healed = True
    app.submit(CheckResult.passed("gpu/GPU-1/ecc", gates=GATES))
    assert observer.calls == 3
    assert [r for r in caplog.records if r.getMessage() == "result observer recovered"]
    observer.healed = False
    app.submit(CheckResult.passed("gpu/GPU-1/ecc", gates=GATES))
    assert observer.calls == 4
    assert len(_failures(caplog)) == 2
