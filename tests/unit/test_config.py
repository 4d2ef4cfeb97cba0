"""Config: file + env + flags precedence, and every error reported at once naming its field."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config, parse_config, parse_go_duration


def test_defaults_are_the_documented_ports() -> None:
    """With nothing given, the sidecar listens on the documented default ports."""
    cfg = load_config(config_file=None, env={})
    assert (cfg.grpc.port, cfg.http.port) == (9180, 9181)
    assert cfg.simulate is False


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    """Flags win over environment, which wins over the file."""
    f = tmp_path / "c.yaml"
    f.write_text("grpc: {port: 1111}\nhttp: {port: 2222}\nlog: {level: debug}\n")
    env = {"TRT_HEALTH_HTTP_PORT": "3333", "TRT_HEALTH__log__level": "warning"}
    cfg = load_config(config_file=str(f), env=env, overrides={("grpc", "port"): 4444})
    assert (cfg.grpc.port, cfg.http.port, cfg.log_level) == (4444, 3333, "warning")


def test_all_errors_reported_at_once() -> None:
    """A config with several mistakes names every bad field in one error."""
    doc = {
        "grpc": {"port": 70000, "max_watchers": "many", "bogus": 1},
        "http": {"port": -1},
        "policy": {"failure_threshold": 0},
        "scenario": "x.yaml",
        "jitter": 3,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    text = "\n".join(info.value.problems)
    for needle in (
        "grpc.port: must be <= 65535",
        "grpc.max_watchers: must be an integer",
        "grpc.bogus: unknown field",
        "http.port: must be >= 0",
        "policy.failure_threshold: must be >= 1",
        "scenario: needs --simulate",
        "jitter: must be <= 0.5",
    ):
        assert needle in text, text


def test_tls_requires_files_and_distinct_port() -> None:
    """TLS without cert/key, or on the plaintext port, is rejected with the field named."""
    with pytest.raises(ConfigError) as info:
        parse_config({"grpc": {"port": 9000, "tls": {"port": 9000, "require_client_cert": True}}})
    text = "\n".join(info.value.problems)
    assert "grpc.tls.cert_file: required" in text
    assert "grpc.tls.key_file: required" in text
    assert "grpc.tls.client_ca_file: required" in text
    assert "grpc.tls.port: must differ" in text


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    """A missing or non-YAML config file is a ConfigError naming the file."""
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(config_file=str(tmp_path / "nope.yaml"), env={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpc: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(config_file=str(bad), env={})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("2h", 7200.0),
        ("10us", 1e-5),
        ("0", 0.0),
        (".5s", 0.5),
        ("1.s", 1.0),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    """Go duration syntax parses like time.ParseDuration."""
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "1x", "ms", "1s2", " 1s", "."])
def test_bad_go_durations(text: str) -> None:
    """Malformed durations are rejected."""
    with pytest.raises(ValueError):
        parse_go_duration(text)
