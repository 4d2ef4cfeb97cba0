"""The import contracts in pyproject.toml (run by ``lint-imports`` in ``make test``) stay complete.

"core imports nothing else in the package" is a list of forbidden modules; a new top-level part of
the package that the list forgot would escape the contract, so this test fails until it is named.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import sidecar

PKG = Path(sidecar.__file__).parent
PYPROJECT = PKG.parent / "pyproject.toml"


def _contracts() -> list[dict[str, object]]:
    doc = tomllib.loads(PYPROJECT.read_text())
    contracts: list[dict[str, object]] = doc["tool"]["importlinter"]["contracts"]
    return contracts


def _top_level_parts() -> set[str]:
    parts = set()
    for p in PKG.iterdir():
        if p.name.startswith(("_", ".")) or p.name == "py.typed":
            continue
        if p.is_dir() and (p / "__init__.py").exists():
            parts.add(f"sidecar.{p.name}")
        elif p.suffix == ".py":
            parts.add(f"sidecar.{p.stem}")
    return parts


def test_core_contract_forbids_every_other_part_of_the_package() -> None:
    (core,) = [c for c in _contracts() if c["source_modules"] == ["sidecar.core"]]
    forbidden = set(core["forbidden_modules"])  # type: ignore[call-overload]
    missing = _top_level_parts() - {"sidecar.core"} - forbidden
    assert not missing, f"add to the core contract's forbidden_modules in pyproject.toml: {sorted(missing)}"


def test_every_contract_names_only_modules_that_exist() -> None:
    parts = _top_level_parts()
    for c in _contracts():
        for key in ("source_modules", "forbidden_modules"):
            for mod in c.get(key, []):  # type: ignore[attr-defined]
                if mod.startswith("sidecar."):
                    top = ".".join(mod.split(".")[:2])
                    assert top in parts, f"contract {c['name']!r} names {mod}, which does not exist"
