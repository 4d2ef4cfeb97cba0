"""docs/config.md's annotated example names exactly the keys the sections declare."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from sidecar.actions.config import ActionsConfig
from sidecar.canary.config import CanaryConfig
from sidecar.config.fields import declared_keys
from sidecar.config.sidecar import SidecarConfig
from sidecar.engine.config import EnginesConfig
from sidecar.gpu.config import GpuConfig
from sidecar.publish.events_config import EventsConfig
from sidecar.trends.config import TrendsConfig
from sidecar.workload.config import GOLDEN_KEYS, WorkloadConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
SECTIONS: dict[str, type[Any]] = {
    "gpu": GpuConfig,
    "canary": CanaryConfig,
    "engines": EnginesConfig,
    "workload": WorkloadConfig,
    "events": EventsConfig,
    "trends": TrendsConfig,
    "actions": ActionsConfig,
}


def _documented() -> set[str]:
    block = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)[0]
    keys: set[str] = set()

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            for one in str(key).split(" / "):  # "namespace / pod_name: ..." documents both
                keys.add(prefix + one)
                walk(value, f"{prefix}{one}.")

    walk(yaml.safe_load(block), "")
    return keys


def _declared() -> set[str]:
    keys = set(declared_keys(SidecarConfig)) | set(SECTIONS)
    for name, cls in SECTIONS.items():
        keys |= {f"{name}.{k}" for k in declared_keys(cls)}
    keys |= {f"workload.{k}" for k in GOLDEN_KEYS}
    keys |= {k.rpartition(".")[0] for k in keys if "." in k}  # log.level: log is a key too
    # the entries of a list are described in a comment beside it
    return {k for k in keys if "[]" not in k}


def test_every_declared_key_is_documented() -> None:
    missing = _declared() - _documented()
    assert not missing, f"document in docs/config.md: {sorted(missing)}"


def test_every_documented_key_exists() -> None:
    stale = _documented() - _declared()
    assert not stale, f"docs/config.md names keys no section reads: {sorted(stale)}"
