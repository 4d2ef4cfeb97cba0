"""Typed reading of config mappings with every error collected, each naming its field.

Every config section (core, gpu, canary, engines, workload, events) is read through a
:class:`Section`, so a bad config reports *all* its problems at once as ``field.path: problem``
and the process exits with :data:`sidecar.core.errors.EXIT_CONFIG`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from sidecar.core.errors import SidecarError
from sidecar.runtime.safeload import clip, short_repr

T = TypeVar("T")

# The longest duration any field accepts unless it names a tighter bound (docs/config.md).
MAX_DURATION_S = 30 * 24 * 3600.0

_DURATION_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Parse a Go duration (``500ms``, ``1m30s``, ``2h``, ``1.5s``) into seconds.

    Raises ``ValueError`` with a message like Go's ``time.ParseDuration``.
    """
    s = text
    if s in ("0", "+0", "-0"):
        return 0.0
    sign = 1.0
    if s and s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if not s:
        raise ValueError(f'time: invalid duration "{text}"')
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _DURATION_RE.match(s, pos)
        if not m:
            if re.match(r"(\d+\.?\d*|\.\d+)$", s[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


class ConfigError(SidecarError):
    """A config that cannot be used. ``problems`` holds one ``field: message`` per error."""

    MAX_PROBLEMS = 50  # a file of a thousand typos must not make a megabyte log line

    def __init__(self, problems: Iterable[str]) -> None:
        found = list(problems)
        self.all_problems = found  # for callers that merge reports (not for logging)
        self.problems = found[: self.MAX_PROBLEMS]
        if len(found) > self.MAX_PROBLEMS:
            self.problems.append(f"... and {len(found) - self.MAX_PROBLEMS} more problems")
        super().__init__("; ".join(self.problems))


class Section:
    """A view of one mapping in the config, collecting errors into a shared list.

    Readers return the default when a field is absent, and the default (after recording an
    error) when it is invalid, so parsing goes on and every problem is reported at once.
    """

    def __init__(self, raw: Any, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            self.error("", f"must be a mapping, got {type(raw).__name__}")
            raw = {}
        self.raw: Mapping[str, Any] = raw
        self._known: set[str] = set()

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str) -> None:
        where = self.field(key) if key else (self.path or "<root>")
        self.errors.append(f"{where}: {message}")

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self.raw and self.raw[key] is not None

    def sub(self, key: str) -> Section:
        self._known.add(key)
        return Section(self.raw.get(key), self.field(key), self.errors)

    def sub_list(self, key: str) -> list[Section]:
        self._known.add(key)
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"must be a list, got {type(value).__name__}")
            return []
        return [Section(item, f"{self.field(key)}[{i}]", self.errors) for i, item in enumerate(value)]

    def text(self, key: str, default: str, *, choices: Iterable[str] | None = None) -> str:
        self._known.add(key)
        value = self.raw.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(key, f"must be a string, got {short_repr(value)}")
            return default
        if choices is not None:
            allowed = list(choices)
            if value not in allowed:
                self.error(key, f"must be one of {', '.join(allowed)}; got {short_repr(value)}")
                return default
        return value

    def opt_text(self, key: str) -> str | None:
        self._known.add(key)
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(key, f"must be a string, got {short_repr(value)}")
            return None
        return value

    def flag(self, key: str, default: bool) -> bool:
        self._known.add(key)
        value = self.raw.get(key, default)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        self.error(key, f"must be true or false, got {short_repr(value)}")
        return default

    def integer(
        self, key: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        self._known.add(key)
        value = self.raw.get(key, default)
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, got {short_repr(value)}")
            return default
        if minimum is not None and value < minimum:
            self.error(key, f"must be >= {minimum}, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.error(key, f"must be <= {maximum}, got {value}")
            return default
        return value

    def number(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        self._known.add(key)
        value = self.raw.get(key, default)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        out = self._finite(key, value, "a number", "number")
        if out is None:
            return default
        if minimum is not None and out < minimum:
            self.error(key, f"must be >= {minimum}, got {out}")
            return default
        if maximum is not None and out > maximum:
            self.error(key, f"must be <= {maximum}, got {out}")
            return default
        return out

    def duration(
        self,
        key: str,
        default: float,
        *,
        minimum: float | None = 0.0,
        maximum: float = MAX_DURATION_S,
    ) -> float:
        """Seconds, given as a number of seconds or a Go duration string (``500ms``).

        Always finite and at most ``maximum`` (default :data:`MAX_DURATION_S`)."""
        self._known.add(key)
        value = self.raw.get(key, default)
        if isinstance(value, str):
            try:
                value = parse_go_duration(value)
            except ValueError as exc:
                self.error(key, str(exc))
                return default
        out = self._finite(key, value, "a duration (seconds or e.g. '500ms')", "duration")
        if out is None:
            return default
        if minimum is not None and out < minimum:
            self.error(key, f"must be >= {minimum}s, got {out}s")
            return default
        if out > maximum:
            self.error(key, f"must be <= {maximum:g}s, got {out:g}s")
            return default
        return out

    def _finite(self, key: str, value: Any, expected: str, noun: str) -> float | None:
        """``value`` as a finite float; None once the error (``must be <expected>`` or ``must be
        a finite <noun>``) is recorded."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(key, f"must be {expected}, got {short_repr(value)}")
            return None
        try:
            out = float(value)
        except OverflowError:
            out = math.inf
        if not math.isfinite(out):
            self.error(key, f"must be a finite {noun}, got {out}")
            return None
        return out

    def text_list(self, key: str, default: Iterable[str] = ()) -> list[str]:
        self._known.add(key)
        value = self.raw.get(key)
        if value is None:
            return list(default)
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"must be a list of strings, got {short_repr(value)}")
            return list(default)
        return list(value)

    def int_list(self, key: str, default: Iterable[int] = ()) -> list[int]:
        self._known.add(key)
        value = self.raw.get(key)
        if value is None:
            return list(default)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, str):
            try:
                return [int(v) for v in value.split(",") if v.strip()]
            except ValueError:
                self.error(key, f"must be a list of integers, got {short_repr(value)}")
                return list(default)
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            self.error(key, f"must be a list of integers, got {short_repr(value)}")
            return list(default)
        return list(value)

    def reject_unknown(self) -> None:
        """Record an error for every key that no reader asked for (typos must not pass)."""
        for key in self.raw:
            if key not in self._known:
                self.error(clip(str(key), 80) if isinstance(key, str) else short_repr(key), "unknown field")
