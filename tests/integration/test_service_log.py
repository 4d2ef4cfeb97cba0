"""The log has one line per service status change, with the reasons (issue #9 item 5)."""

from __future__ import annotations

import logging

import pytest

from sidecar.core.values import CheckResult, Severity

from .conftest import NOT_SERVING, SERVING, AppThread, check, wait_until


def _changes(caplog: pytest.LogCaptureFixture, service: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.getMessage() == "service changed" and getattr(r, "service", None) == service
    ]


def test_readiness_changes_are_logged_once_each_with_reasons(
    app: AppThread, caplog: pytest.LogCaptureFixture
) -> None:
    """SERVING -> NOT_SERVING is one warning line naming the reason; the same evidence again
    logs nothing more; recovery is one info line."""
    caplog.set_level(logging.INFO, logger="sidecar.app")
    wait_until(lambda: check(app.addr, "readiness") == SERVING)
    app.submit(CheckResult.passed("canary/run", severity=Severity.CRITICAL))
    bad = CheckResult.failed("canary/run", "CanaryMismatch", "output differs", severity=Severity.CRITICAL)
    app.submit(bad)
    wait_until(lambda: check(app.addr, "readiness") == NOT_SERVING)
    down = [r for r in _changes(caplog, "readiness") if getattr(r, "to", "") == "NOT_SERVING"]
    assert len(down) == 1
    assert down[0].levelno == logging.WARNING
    assert getattr(down[0], "from") == "SERVING"
    assert any("CanaryMismatch" in reason for reason in vars(down[0])["reasons"])
    app.submit(bad)  # same evidence
    app.submit(CheckResult.passed("other/check", severity=Severity.INFO))
    # witness: the loop handled both (the new condition is logged)
    wait_until(lambda: any(getattr(r, "condition", None) == "other/check" for r in caplog.records))
    assert [r for r in _changes(caplog, "readiness") if getattr(r, "to", "") == "NOT_SERVING"] == down
    app.submit(CheckResult.passed("canary/run", severity=Severity.CRITICAL))
    wait_until(lambda: check(app.addr, "readiness") == SERVING)
    up = [r for r in _changes(caplog, "readiness") if getattr(r, "to", "") == "SERVING"]
    assert up and up[-1].levelno == logging.INFO
