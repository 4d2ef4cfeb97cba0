"""The component registry is the one place a component section is declared: config parses
exactly its sections, and importing it (or parsing config) imports no component module."""

from __future__ import annotations

import subprocess
import sys

from sidecar.components import COMPONENTS, sections
from sidecar.config import component_parsers, parse_config


def test_config_parses_exactly_the_registry_sections_in_start_order() -> None:
    assert list(component_parsers()) == list(sections(COMPONENTS))
    assert sections(COMPONENTS)[0] == "gpu"  # the others ask the GPU: it starts first
    assert set(parse_config({}).components) == set(sections(COMPONENTS))


def test_parsing_config_through_the_registry_imports_no_component_module() -> None:
    """`probe` and config checks stay light: the builders' modules load only when building."""
    code = (
        "import sys\n"
        "from sidecar.config import parse_config\n"
        "parse_config({'gpu': {}, 'canary': {}, 'events': {'enabled': False}})\n"
        "heavy = [m for m in sys.modules if m.endswith('.component') or m == 'sidecar.publish.events'\n"
        "         or m.split('.')[0] in ('grpc', 'prometheus_client')]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.strip() == ""
