"""The shared bounded reader and YAML loader every file of the sidecar goes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.config import ConfigError
from sidecar.engine.manifest import load_manifest
from sidecar.gpu.latches import LatchStore
from sidecar.runtime.safeload import (
    UnsafeDocumentError,
    load_yaml_bounded,
    read_bounded,
    short_repr,
)

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
)


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer: refused at once (a plain read would block forever)."""
    fifo = tmp_path / "m.yaml"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeDocumentError, match="not a regular file"):
        read_bounded(fifo, 1024)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_devices_are_refused(path: str) -> None:
    with pytest.raises(UnsafeDocumentError, match=f"{path}: not a regular file"):
        read_bounded(path, 1024)


def test_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises((UnsafeDocumentError, IsADirectoryError)):
        read_bounded(tmp_path, 1024)


def test_size_limit_is_checked_before_reading(tmp_path: Path) -> None:
    f = tmp_path / "big.yaml"
    f.write_bytes(b"x" * 1025)
    with pytest.raises(UnsafeDocumentError, match="1025 bytes, larger than the limit of 1024"):
        read_bounded(f, 1024)
    f.write_bytes(b"x" * 1024)
    assert len(read_bounded(f, 1024)) == 1024


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_bounded(tmp_path / "nope", 10)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (BOMB, "expands to more than"),
        ("[" * 65 + "]" * 65, "nested deeper than 64"),
        ("x: " + "{a: " * 20000 + "1" + "}" * 20000, "nested deeper than"),
        ("a: &a [1, *a]", "an alias refers to a node that contains it"),
        ("a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]", "more than 100 aliases"),
        ("a: [", "not valid YAML"),
    ],
)
def test_unsafe_documents_are_refused_naming_the_file(text: str, fragment: str) -> None:
    with pytest.raises(UnsafeDocumentError) as exc:
        load_yaml_bounded(text, "f.yaml")
    assert str(exc.value).startswith("f.yaml: ")
    assert fragment in str(exc.value)
    assert len(str(exc.value)) < 400


def test_ordinary_documents_with_aliases_and_merges_load() -> None:
    doc = load_yaml_bounded("base: &b {x: 1}\nuse: {<<: *b, y: 2}\nlist: [*b, *b]\n", "f")
    assert doc == {"base": {"x": 1}, "use": {"x": 1, "y": 2}, "list": [{"x": 1}, {"x": 1}]}
    assert load_yaml_bounded("[" * 64 + "]" * 64, "f") is not None


def test_short_repr_never_expands_a_shared_structure() -> None:
    level: list[object] = ["lol"] * 9
    for _ in range(8):
        level = [level] * 9  # 9**9 leaves if expanded
    assert len(short_repr({"canary": level})) <= 200
    assert len(short_repr("x" * 10_000)) <= 200


def test_manifest_bomb_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "prod.manifest.yaml"
    path.write_text(BOMB, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_manifest(path)
    assert str(path) in str(exc.value) and "expands to more than" in str(exc.value)


def test_manifest_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "prod.manifest.yaml"
    path.write_bytes(b"name: \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_manifest(path)


def test_oversized_latch_file_is_a_reported_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "gpu-latches.json"
    path.write_bytes(b" " * (5 << 20))
    store = LatchStore(path, boot_id="b")
    store.load()
    # the store keeps the file aside as corrupt (gpu/state gates readiness)
    assert store.problem is not None and "larger than" in store.problem
