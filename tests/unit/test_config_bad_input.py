"""Bad config input: bombs, deep nesting, bad encodings, non-finite durations, port clashes,
malformed environment names, and ``policy.overrides`` as docs/probes.md documents it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sidecar.config import ConfigError, load_config, parse_config
from sidecar.core.policy import HealthPolicy
from sidecar.core.values import CheckResult, CheckStatus, Severity

ROOT = Path(__file__).resolve().parents[2]

BOMB = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
canary: {interval: *g}
"""


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    return "\n".join(exc.value.problems)


def load_file(tmp_path: Path, data: bytes | str) -> ConfigError:
    path = tmp_path / "c.yaml"
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    with pytest.raises(ConfigError) as exc:
        load_config(config_file=str(path), env={})
    assert str(path) in problems(exc), "the error names the file"
    assert len(problems(exc)) < 400, "the error is short"
    return exc.value


def test_alias_bomb_is_refused_with_a_short_error(tmp_path: Path) -> None:
    """A 400-byte alias bomb is a config error naming the file, not a hang."""
    err = load_file(tmp_path, BOMB)
    assert "expands to more than" in str(err)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    """20k levels of nesting: exit-2 ConfigError (was RecursionError -> exit 1)."""
    err = load_file(tmp_path, "canary: " + "[" * 20000 + "]" * 20000 + "\n")
    assert "nested deeper than" in str(err)


def test_non_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A ``\\xff`` byte: ConfigError naming the file (was UnicodeDecodeError -> exit 1)."""
    err = load_file(tmp_path, b"canary:\n  interval: \xff5s\n")
    assert "not UTF-8" in str(err)


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    err = load_file(tmp_path, "# " + "x" * (2 << 20) + "\n")
    assert "larger than the limit" in str(err)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(config_file=str(tmp_path), env={})
    assert str(tmp_path) in problems(exc)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gpu.poll_interval", float("nan")),
        ("gpu.poll_interval", float("inf")),
        ("gpu.poll_interval", "2h"),
        ("shutdown_grace", "100000000h"),
        ("shutdown_grace", 1e300),
        ("gpu.event_wait_timeout", 1e300),
        ("gpu.event_wait_timeout", "9" * 400 + "s"),
        ("canary.interval", float("nan")),
        ("engines.rehash_interval", "1000000h"),
        ("liveness.max_loop_lag", float("-inf")),
        ("jitter", float("nan")),
    ],
)
def test_non_finite_and_huge_durations_are_rejected_naming_the_field(key: str, value: object) -> None:
    section, _, leaf = key.rpartition(".")
    doc: dict[str, object] = {leaf: value}
    if section:
        doc = {section: doc}
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert any(p.startswith(f"{key}: ") for p in exc.value.problems), exc.value.problems


def test_documented_bounds_still_accept_sane_values() -> None:
    cfg = parse_config({"shutdown_grace": "10m", "gpu": {"poll_interval": "1h", "event_wait_timeout": "10s"}})
    assert cfg.shutdown_grace_s == 600.0


def test_tls_port_must_differ_from_http_port() -> None:
    """grpc.tls.port == http.port is exit 2 naming the field (was a bind error, exit 3)."""
    doc = {
        "http": {"port": 9300},
        "grpc": {"port": 9301, "tls": {"port": 9300, "cert_file": "c", "key_file": "k"}},
    }
    with pytest.raises(ConfigError) as exc:
        parse_config(doc)
    assert "grpc.tls.port: must differ from http.port (9300)" in exc.value.problems


def test_port_zero_never_clashes() -> None:
    doc = {
        "http": {"port": 0},
        "grpc": {"port": 0, "tls": {"port": 0, "cert_file": "c", "key_file": "k"}},
    }
    assert parse_config(doc).grpc.tls is not None


def test_http_disabled_does_not_clash() -> None:
    doc = {
        "http": {"port": 9300, "enabled": False},
        "grpc": {"tls": {"port": 9300, "cert_file": "c", "key_file": "k"}},
    }
    assert parse_config(doc).http.enabled is False


@pytest.mark.parametrize(
    "name", ["TRT_HEALTH__gpu____poll_interval", "TRT_HEALTH__gpu__", "TRT_HEALTH____gpu"]
)
def test_empty_env_path_segment_is_an_error_naming_the_variable(name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(config_file=None, env={name: "2s"})
    assert any(name in p and "empty path segment" in p for p in exc.value.problems)


def test_env_errors_are_reported_with_the_other_errors() -> None:
    """Every config error at once: a bad variable and a bad field in one report."""
    env = {"TRT_HEALTH__gpu____x": "1", "TRT_HEALTH__gpu__poll_interval": "fast"}
    with pytest.raises(ConfigError) as exc:
        load_config(config_file=None, env=env)
    assert len(exc.value.problems) == 2
    assert any("empty path segment" in p for p in exc.value.problems)
    assert any(p.startswith("gpu.poll_interval: ") for p in exc.value.problems)


def _docs_overrides_example() -> str:
    text = (ROOT / "docs" / "probes.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    return next(b for b in blocks if "overrides:" in b)


def result(name: str, status: CheckStatus = CheckStatus.FAIL) -> CheckResult:
    return CheckResult(
        name=name,
        status=status,
        severity=Severity.CRITICAL,
        reason="Broken",
        gates=("readiness",),
    )


def test_docs_policy_overrides_example_is_accepted_and_changes_the_debounce(
    tmp_path: Path,
) -> None:
    """docs/probes.md's own example loads (it exited 2 'unknown field'), and the override
    debounces a ``gpu/`` condition (2 failures) while the default (1) still applies elsewhere."""
    path = tmp_path / "c.yaml"
    path.write_text(_docs_overrides_example(), encoding="utf-8")
    cfg = load_config(config_file=str(path), env={})
    policy = HealthPolicy(cfg.policy)
    policy.set_started(True)
    policy.observe([result("gpu/GPU-0/thermal", CheckStatus.OK), result("nvml", CheckStatus.OK)], 0.0)
    assert policy.verdicts()["readiness"].serving
    policy.observe([result("gpu/GPU-0/thermal")], 0.0)
    assert policy.verdicts()["readiness"].serving, "one gpu/ failure is below its threshold 2"
    policy.observe([result("gpu/GPU-0/thermal")], 1.0)
    assert not policy.verdicts()["readiness"].serving, "the second failure reaches it"
    policy.observe([result("nvml")], 2.0)
    assert "nvml: Broken" in policy.verdicts()["readiness"].reasons, "default threshold 1"


def test_override_with_unknown_key_names_it() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"policy": {"overrides": {"gpu/": {"failure_treshold": 2}}}})
    assert exc.value.problems == ["policy.overrides.gpu/.failure_treshold: unknown field"]


def test_a_thousand_typos_give_a_bounded_report(tmp_path: Path) -> None:
    """Every error at once, but a file of 1,000 unknown keys is not a 1,000-line report."""
    path = tmp_path / "c.yaml"
    path.write_text("".join(f"typo{i}: 1\n" for i in range(1000)), encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(config_file=str(path), env={})
    assert exc.value.problems[0] == "typo0: unknown field"
    assert exc.value.problems[-1] == "... and 950 more problems"
    assert len(str(exc.value)) < 2000
