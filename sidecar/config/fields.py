"""Config declared once: each field's key, default and bounds live on the dataclass field.

A section's dataclass *is* its schema::

    @dataclass(frozen=True, slots=True)
    class EnginesConfig:
        hash_timeout_s: float = duration(600.0, above=0)
        watch: str = text("auto", choices=WATCH_MODES)

and one generic reader, :func:`read`, turns a config mapping into it through a
:class:`~sidecar.config.section.Section`, so every problem is collected (not raised) as
``field.path: problem`` and the whole config reports all its errors at once.

The key is the field name, except that a duration field's trailing ``_s`` is dropped
(``hash_timeout_s`` is read from ``hash_timeout``); ``key=`` names it otherwise, and a dotted key
(``log.level``) reads a field of a sub-mapping. A value that fails its kind or bounds is an error
and the default is used, so reading goes on. Rules that relate several fields ("give exactly one
of manifest or file") are small validators next to the dataclass, passed as ``check=``: they
take the value read and its section, record errors there, and return the value to use.

Classes that cannot carry these declarations (the core's :class:`~sidecar.core.policy.Thresholds`
must not import the config package) are read with a ``specs=`` table of :class:`Spec` keyed by
field name; their defaults still come from the class. Why a table of our own and not pydantic or
msgspec: docs/config.md ("Why this design", measured by ``bench/config_choice.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from sidecar.config.section import MAX_DURATION_S, Section

T = TypeVar("T")

SPEC_KEY = "sidecar.config"  # the dataclass field metadata entry that holds a field's Spec

Kind = Literal[
    "text", "opt_text", "path", "flag", "integer", "number", "duration", "text_list", "int_list",
    "section", "sections", "custom",
]  # fmt: skip

# A custom reader: (the section that holds the key, the key, the default) -> the value.
Reader = Callable[[Section, str, Any], Any]
# A cross-field rule: (the value read, its section) -> the value to use (errors go on the section).
Check = Callable[[Any, Section], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """How one field is read. Built by the declaration helpers below (or directly, in a
    ``specs=`` table for a class that carries no declarations)."""

    kind: Kind
    key: str = ""  # "" => the field name (a duration's trailing "_s" dropped)
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # an exclusive minimum: "must be > N"
    choices: tuple[str, ...] | None = None
    optional: bool = False  # integer / number: read only when present (else the default, None)
    valid: Callable[[Any], str | None] | None = None  # one value's rule: the problem, or None
    convert: Callable[[Any], Any] | None = None  # applied to a value that is not None
    section: type[Any] | None = None  # section / sections: the dataclass of the sub-mapping
    specs: Mapping[str, Spec] | None = None  # section / sections: for a class without metadata
    check: Check | None = None  # section / sections: the sub-mapping's cross-field rule
    reader: Reader | None = None  # custom
    keys: tuple[str, ...] = ()  # custom: the keys it reads when they are not the field's own key


def _field(spec: Spec, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    return dataclasses.field(default=default, default_factory=factory, metadata={SPEC_KEY: spec})


def text(
    default: str = "",
    *,
    key: str = "",
    choices: Iterable[str] | None = None,
    valid: Callable[[str], str | None] | None = None,
    convert: Callable[[str], str] | None = None,
) -> str:
    """A string; ``choices`` restricts it, ``valid`` checks it, ``convert`` normalises it."""
    spec = Spec(
        "text", key, choices=tuple(choices) if choices is not None else None, valid=valid, convert=convert
    )
    return cast(str, _field(spec, default))


def opt_text(*, key: str = "", valid: Callable[[str], str | None] | None = None) -> str | None:
    """A string that may be absent (None)."""
    return cast("str | None", _field(Spec("opt_text", key, valid=valid), None))


def opt_path(*, key: str = "") -> Path | None:
    """A file or directory path that may be absent (an empty string is None too)."""
    return cast("Path | None", _field(Spec("opt_text", key, convert=_path_or_none), None))


def path(default: Path, *, key: str = "") -> Path:
    """A file or directory path."""
    return cast(Path, _field(Spec("path", key), default))


def _path_or_none(value: str) -> Path | None:
    return Path(value) if value else None


def flag(default: bool, *, key: str = "") -> bool:
    return cast(bool, _field(Spec("flag", key), default))


def integer(default: int, *, key: str = "", min: int | None = None, max: int | None = None) -> int:
    return cast(int, _field(Spec("integer", key, minimum=min, maximum=max), default))


def opt_integer(*, key: str = "", min: int | None = None, max: int | None = None) -> int | None:
    """An integer read only when given (else None)."""
    return cast("int | None", _field(Spec("integer", key, minimum=min, maximum=max, optional=True), None))


def number(default: float, *, key: str = "", min: float | None = None, max: float | None = None) -> float:
    return cast(float, _field(Spec("number", key, minimum=min, maximum=max), default))


def opt_number(*, key: str = "", min: float | None = None, max: float | None = None) -> float | None:
    """A number read only when given (else None)."""
    return cast("float | None", _field(Spec("number", key, minimum=min, maximum=max, optional=True), None))


def duration(
    default: float,
    *,
    key: str = "",
    min: float | None = 0.0,
    max: float = MAX_DURATION_S,
    above: float | None = None,
    valid: Callable[[float], str | None] | None = None,
) -> float:
    """Seconds: a number or a Go duration (``500ms``); finite, ``min <= s <= max`` (and
    ``s > above``). The key drops the field's ``_s`` suffix."""
    spec = Spec("duration", key, minimum=min, maximum=max, above=above, valid=valid)
    return cast(float, _field(spec, default))


def text_list(default: tuple[str, ...] = (), *, key: str = "") -> tuple[str, ...]:
    """A list of strings (or one comma-separated string)."""
    return cast("tuple[str, ...]", _field(Spec("text_list", key), default))


def int_list(
    default: tuple[int, ...] = (), *, key: str = "", valid: Callable[[Any], str | None] | None = None
) -> tuple[int, ...]:
    """A list of integers (or one integer, or a comma-separated string)."""
    return cast("tuple[int, ...]", _field(Spec("int_list", key, valid=valid), default))


def section(
    cls: type[T],
    *,
    key: str = "",
    check: Callable[[T, Section], T] | None = None,
    specs: Mapping[str, Spec] | None = None,
) -> T:
    """A sub-mapping read as ``cls`` (absent: ``cls()``); ``specs`` for a class without
    declarations of its own."""
    return cast(T, _field(Spec("section", key, section=cls, check=check, specs=specs), factory=cls))


def opt_section(cls: type[T], *, key: str = "", check: Callable[[T, Section], T] | None = None) -> T | None:
    """A sub-mapping read as ``cls`` only when given (else None)."""
    return cast("T | None", _field(Spec("section", key, section=cls, check=check, optional=True), None))


def sections(cls: type[T], *, key: str = "", check: Callable[[T, Section], T] | None = None) -> tuple[T, ...]:
    """A list of sub-mappings, each read as ``cls`` (and checked by ``check``)."""
    return cast("tuple[T, ...]", _field(Spec("sections", key, section=cls, check=check), ()))


def custom(
    reader: Callable[[Section, str, T], T],
    *,
    key: str = "",
    keys: tuple[str, ...] = (),
    default: Any = dataclasses.MISSING,
    factory: Callable[[], T] | Any = dataclasses.MISSING,
) -> T:
    """A field with a reader of its own (mappings keyed by data, documents read from files).
    ``keys``: the keys it reads, when they are not its own key (for :func:`declared_keys`)."""
    return cast(T, _field(Spec("custom", key, reader=reader, keys=keys), default, factory))


def spec_of(f: dataclasses.Field[Any], specs: Mapping[str, Spec] | None = None) -> Spec | None:
    """The declaration of one field (None: not read from the config)."""
    if specs is not None and f.name in specs:
        return specs[f.name]
    found = f.metadata.get(SPEC_KEY)
    return found if isinstance(found, Spec) else None


def key_of(name: str, spec: Spec) -> str:
    """The config key of a field: ``key=``, else its name (a duration's ``_s`` suffix dropped)."""
    if spec.key:
        return spec.key
    if spec.kind == "duration" and name.endswith("_s"):
        return name[:-2]
    return name


class _Reading:
    """One call of :func:`read`: shares sub-sections between dotted keys, and remembers every
    section it opened so that each rejects its unknown keys once, at the end."""

    def __init__(self) -> None:
        self.subs: dict[tuple[int, str], Section] = {}
        self.opened: list[Section] = []

    def sub(self, sec: Section, key: str) -> Section:
        found = self.subs.get((id(sec), key))
        if found is None:
            found = sec.sub(key)
            self.subs[(id(sec), key)] = found
            self.opened.append(found)
        return found

    def where(self, sec: Section, key: str) -> tuple[Section, str]:
        *path, leaf = key.split(".")
        for part in path:
            sec = self.sub(sec, part)
        return sec, leaf

    def value(self, sec: Section, key: str, spec: Spec, default: Any) -> Any:
        sec, key = self.where(sec, key)
        value = self._value(sec, key, spec, default)
        if spec.above is not None and value is not None and not value > spec.above:
            sec.error(key, f"must be > {spec.above:g}")
            value = default
        if spec.valid is not None and value is not None:
            problem = spec.valid(value)
            if problem is not None:
                sec.error(key, problem)
                value = default
        if spec.convert is not None and value is not None:
            value = spec.convert(value)
        return value

    def _value(self, sec: Section, key: str, spec: Spec, default: Any) -> Any:
        kind = spec.kind
        if kind == "text":
            return sec.text(key, default, choices=spec.choices)
        if kind == "opt_text":
            return sec.opt_text(key)
        if kind == "path":
            return Path(sec.text(key, str(default)))
        if kind == "flag":
            return sec.flag(key, default)
        if spec.optional and not sec.has(key):
            return default
        if kind == "integer":
            lo, hi = spec.minimum, spec.maximum
            return sec.integer(
                key,
                default or 0,
                minimum=None if lo is None else int(lo),
                maximum=None if hi is None else int(hi),
            )
        if kind == "number":
            return sec.number(key, default or 0.0, minimum=spec.minimum, maximum=spec.maximum)
        if kind == "duration":
            hi = MAX_DURATION_S if spec.maximum is None else spec.maximum
            return sec.duration(key, default, minimum=spec.minimum, maximum=hi)
        if kind == "text_list":
            return tuple(sec.text_list(key, default))
        if kind == "int_list":
            return tuple(sec.int_list(key, default))
        if kind == "section":
            assert spec.section is not None
            obj = self.fill(spec.section, self.sub(sec, key), default, spec.specs)
            return spec.check(obj, self.sub(sec, key)) if spec.check is not None else obj
        if kind == "sections":
            assert spec.section is not None
            items = sec.sub_list(key)
            self.opened.extend(items)
            out = []
            for item in items:
                obj = self.fill(spec.section, item, None, spec.specs)
                out.append(spec.check(obj, item) if spec.check is not None else obj)
            return tuple(out)
        assert spec.reader is not None
        return spec.reader(sec, key, default)

    def fill(self, cls: type[T], sec: Section, base: T | None, specs: Mapping[str, Spec] | None) -> T:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cast(Any, cls)):
            spec = spec_of(f, specs)
            if spec is None:
                continue
            values[f.name] = self.value(sec, key_of(f.name, spec), spec, _default(f, base))
        if base is not None:
            return cast(T, dataclasses.replace(cast(Any, base), **values))
        return cls(**values)


def _default(f: dataclasses.Field[Any], base: Any) -> Any:
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def read(
    cls: type[T],
    sec: Section,
    *,
    base: T | None = None,
    specs: Mapping[str, Spec] | None = None,
    check: Callable[[T, Section], T] | None = None,
) -> T:
    """Read ``sec`` as ``cls``: every declared field, then ``check``, then every key no field
    asked for is an ``unknown field`` error. Defaults are ``base``'s values where given.
    Problems are recorded on ``sec`` (the caller raises :class:`ConfigError` at the end)."""
    reading = _Reading()
    obj = reading.fill(cls, sec, base, specs)
    if check is not None:
        obj = check(obj, sec)
    sec.reject_unknown()
    for opened in reading.opened:
        opened.reject_unknown()
    return obj


def declared_keys(cls: type[Any], specs: Mapping[str, Spec] | None = None, prefix: str = "") -> list[str]:
    """Every config key ``cls`` reads, as dotted paths (nested sections expanded; a list of
    sections as ``key[]``): for the docs check and for tooling."""
    out: list[str] = []
    for f in dataclasses.fields(cls):
        spec = spec_of(f, specs)
        if spec is None:
            continue
        key = prefix + key_of(f.name, spec)
        if spec.kind == "section" and spec.section is not None:
            out.append(key)
            out.extend(declared_keys(spec.section, spec.specs, key + "."))
        elif spec.kind == "sections" and spec.section is not None:
            out.append(key)
            out.extend(declared_keys(spec.section, spec.specs, key + "[]."))
        elif spec.kind == "custom" and spec.keys:
            out.extend(prefix + k for k in spec.keys)
        else:
            out.append(key)
    return out


def in_state_dir(name: str) -> str | None:
    """A ``valid=`` rule: a plain file name, kept inside ``state_dir``."""
    if "/" in name or name in ("", ".", ".."):
        return f"must be a file name inside state_dir, got {name!r}"
    return None
