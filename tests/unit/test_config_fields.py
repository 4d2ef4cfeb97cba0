"""The declarative config reader: each field declared once, every problem collected naming it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import Section
from sidecar.config.fields import (
    Spec,
    declared_keys,
    duration,
    flag,
    integer,
    opt_integer,
    opt_path,
    opt_section,
    read,
    section,
    sections,
    text,
)
from sidecar.config.sidecar import SidecarConfig
from sidecar.core.policy import Thresholds


def _named(item: Item, sec: Section) -> Item:
    if not item.name:
        sec.error("name", "required")
    return item


@dataclass(frozen=True, slots=True)
class Item:
    name: str = text()
    size: int = integer(1, min=1)


@dataclass(frozen=True, slots=True)
class Inner:
    depth: int = integer(2, min=0, max=9)


@dataclass(frozen=True, slots=True)
class Doc:
    wait_s: float = duration(5.0, above=0)
    mode: str = text("a", choices=("a", "b"), valid=lambda v: None if v != "b" else "b is retired")
    level: str = text("info", key="log.level")
    verbose: bool = flag(False, key="log.verbose")
    count: int | None = opt_integer(min=0)
    where: Path | None = opt_path()
    inner: Inner = section(Inner)
    extra: Inner | None = opt_section(Inner)
    items: tuple[Item, ...] = sections(Item, check=_named)
    note: str = "not a key"


def parse(raw: Any) -> tuple[Doc, list[str]]:
    errors: list[str] = []
    return read(Doc, Section(raw, "doc", errors)), errors


def test_defaults_when_nothing_is_given() -> None:
    doc, errors = parse({})
    assert errors == []
    assert doc == Doc(wait_s=5.0, mode="a", level="info", count=None, where=None, inner=Inner(2), extra=None)


def test_every_problem_at_once_each_naming_its_field_and_the_default_is_kept() -> None:
    doc, errors = parse(
        {
            "wait": 0,
            "mode": "b",
            "log": {"level": 3, "verbose": "x", "colour": 1},
            "count": -1,
            "inner": {"depth": 10, "width": 1},
            "items": [{"size": 0}, {"name": "ok", "size": "x", "zz": 1}],
            "note": "x",
        }
    )
    assert sorted(errors) == sorted(
        [
            "doc.wait: must be > 0",
            "doc.mode: b is retired",
            "doc.log.level: must be a string, got 3",
            "doc.log.verbose: must be true or false, got 'x'",
            "doc.count: must be >= 0, got -1",
            "doc.inner.depth: must be <= 9, got 10",
            "doc.items[0].size: must be >= 1, got 0",
            "doc.items[0].name: required",
            "doc.items[1].size: must be an integer, got 'x'",
            "doc.note: unknown field",
            "doc.log.colour: unknown field",
            "doc.inner.width: unknown field",
            "doc.items[1].zz: unknown field",
        ]
    )
    assert (doc.wait_s, doc.mode, doc.level, doc.inner.depth) == (5.0, "a", "info", 2)


def test_dotted_keys_share_their_sub_mapping() -> None:
    """``log.level`` and ``log.verbose`` read one ``log:`` mapping: neither is an unknown field."""
    doc, errors = parse({"log": {"level": "debug", "verbose": True}})
    assert errors == [] and (doc.level, doc.verbose) == ("debug", True)


def test_optional_values_and_sections_only_when_given() -> None:
    doc, errors = parse({"count": 0, "where": "/x", "extra": {"depth": 3}, "items": [{"name": "a"}]})
    assert errors == []
    assert (doc.count, doc.where, doc.extra, doc.items) == (0, Path("/x"), Inner(3), (Item("a", 1),))
    assert parse({"where": ""})[0].where is None


def test_a_class_without_declarations_reads_through_a_table_with_its_own_defaults() -> None:
    specs = {"failure_threshold": Spec("integer", minimum=1)}
    errors: list[str] = []
    got = read(Thresholds, Section({"failure_threshold": 4}, "p", errors), specs=specs)
    assert errors == [] and got == dataclasses.replace(Thresholds(), failure_threshold=4)
    base = Thresholds(failure_threshold=7, success_threshold=2)
    got = read(Thresholds, Section({"failure_threshold": 0}, "p", errors), base=base, specs=specs)
    assert errors == ["p.failure_threshold: must be >= 1, got 0"] and got == base
    read(Thresholds, Section({"success_threshold": 2}, "p", errors := []), specs=specs)
    assert errors == ["p.success_threshold: unknown field"], "a field the table leaves out is no key"


def test_a_cross_field_check_sees_the_value_read_and_may_replace_it() -> None:
    def no_more_than_depth(doc: Doc, sec: Section) -> Doc:
        if doc.count is not None and doc.count > doc.inner.depth:
            sec.error("count", f"must be <= inner.depth ({doc.inner.depth})")
            return dataclasses.replace(doc, count=None)
        return doc

    errors: list[str] = []
    doc = read(Doc, Section({"count": 5}, "doc", errors), check=no_more_than_depth)
    assert errors == ["doc.count: must be <= inner.depth (2)"] and doc.count is None


@pytest.mark.parametrize("raw", [5, [], "x"])
def test_a_section_that_is_not_a_mapping(raw: object) -> None:
    doc, errors = parse({"inner": raw})
    assert errors == [f"doc.inner: must be a mapping, got {type(raw).__name__}"] and doc.inner == Inner()


def test_declared_keys_name_every_key_once() -> None:
    assert declared_keys(Doc) == [
        "wait", "mode", "log.level", "log.verbose", "count", "where", "inner", "inner.depth",
        "extra", "extra.depth", "items", "items[].name", "items[].size",
    ]  # fmt: skip
    keys = declared_keys(SidecarConfig)
    assert len(keys) == len(set(keys))
    assert {"grpc.tls.require_client_cert", "log.level", "policy", "shutdown_grace"} <= set(keys)
