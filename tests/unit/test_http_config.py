"""The HTTP port's hardening keys: http.max_connections and http.request_timeout."""

from __future__ import annotations

import pytest

from sidecar.config import ConfigError, parse_config


def test_defaults() -> None:
    cfg = parse_config({})
    assert (cfg.http.max_connections, cfg.http.request_timeout_s) == (256, 5.0)


def test_values_are_read() -> None:
    cfg = parse_config({"http": {"max_connections": 8, "request_timeout": "300ms"}})
    assert (cfg.http.max_connections, cfg.http.request_timeout_s) == (8, 0.3)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_connections", 0),
        ("max_connections", 10**9),
        ("request_timeout", 0),
        ("request_timeout", float("nan")),
        ("request_timeout", "100000h"),
    ],
)
def test_bad_values_name_the_field(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"http": {key: value}})
    assert f"http.{key}" in str(err.value)
