"""Write prometheusrule.yaml (a PrometheusRule) from the plain rule file trt-health.rules.yaml.

``python manifests/monitoring/render_prometheusrule.py`` (``make rules``) regenerates it;
tests/integration/test_rule_pack.py fails when the two differ.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
HEADER = (
    "# GENERATED from trt-health.rules.yaml by render_prometheusrule.py (make rules); do not edit.\n"
    "# tests/integration/test_rule_pack.py fails when the two differ.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL) as literal blocks, so the output reads like the source."""


def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _literal)


def render() -> str:
    groups: Any = yaml.safe_load((HERE / "trt-health.rules.yaml").read_text())
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "trt-health-sidecar",
            "labels": {"app.kubernetes.io/name": "trt-health-sidecar"},
        },
        "spec": groups,
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=200)


if __name__ == "__main__":
    (HERE / "prometheusrule.yaml").write_text(render())
    sys.exit(0)
