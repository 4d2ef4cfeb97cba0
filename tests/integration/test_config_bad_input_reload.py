"""A config file changed to bad bytes or a bomb on reload: rejected and counted, never an
internal error (the reload path catches ConfigError only)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sidecar.testing.reload import reloads_rejected

from .conftest import AppThread, core_config


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"gpu:\n  poll_interval: \xff5s\n", "not UTF-8"),
        (b"canary: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested deeper than"),
        (
            b"a: &a [x, x, x, x, x, x, x, x, x]\n"
            + b"".join(
                f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n".encode()
                for p, n in zip("abcdef", "bcdefg", strict=True)
            ),
            "expands to more than",
        ),
    ],
)
def test_bad_config_file_on_reload_is_rejected_and_counted(
    make_app: object, tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes, fragment: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("{}\n", encoding="utf-8")
    app: AppThread = make_app(core_config(config_file=str(path)))  # type: ignore[operator]
    before = reloads_rejected(app.http_base)
    path.write_bytes(data)
    with caplog.at_level(logging.ERROR):
        assert app.call(app.app.reload_config({("state_dir",): str(tmp_path)})) is False
    assert reloads_rejected(app.http_base) == before + 1
    records = [r for r in caplog.records if r.getMessage() == "config reload rejected, old config stays"]
    assert records, "the rejection is logged"
    problems = " ".join(getattr(records[-1], "problems", []))
    assert str(path) in problems and fragment in problems and len(problems) < 400
