"""The Prometheus rule pack and the Grafana dashboard (manifests/monitoring/), checked with the
real ``promtool`` (Debian's ``prometheus`` package; ``.ci/run`` installs it)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.testing import SidecarProcess, wait_until
from tests.integration.conftest import SERVING, check

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "manifests" / "monitoring"
RULES = MONITORING / "trt-health.rules.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "trt-health-dashboard.json"
RULE_TESTS = REPO / "tests" / "rules"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package "
            "(apt-get install --no-install-recommends prometheus; .ci/run does)"
        )
    return found


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_rules_are_valid() -> None:
    """promtool parses every expression and every rule of the pack."""
    proc = run_promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_rule_unit_tests_pass() -> None:
    """promtool's rule unit tests: a healthy fleet (no alert), one outlier digest
    (CanaryDigestOutlier for that pod only) and a fleet-wide failure (fleet, node and
    burn-rate alerts, the per-reason and per-GPU-model views)."""
    files = sorted(str(p) for p in RULE_TESTS.glob("*.test.yaml"))
    assert files
    proc = run_promtool("test", "rules", *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("healthy fleet", "one pod disagrees", "fleet-wide failure"):
        assert name in "\n".join(Path(f).read_text() for f in files)


def test_rule_unit_tests_fail_when_a_rule_is_wrong(tmp_path: Path) -> None:
    """The unit tests have teeth: loosening the outlier threshold makes them fail."""
    broken = tmp_path / "manifests" / "monitoring"
    broken.mkdir(parents=True)
    text = RULES.read_text()
    assert "agreement:ratio < 0.5)" in text
    (broken / RULES.name).write_text(text.replace("agreement:ratio < 0.5)", "agreement:ratio < 0.2)"))
    tests = tmp_path / "tests" / "rules"
    tests.mkdir(parents=True)
    for f in RULE_TESTS.glob("*.test.yaml"):
        (tests / f.name).write_text(f.read_text())
    proc = subprocess.run(
        [promtool(), "test", "rules", *sorted(str(p) for p in tests.glob("*.test.yaml"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "CanaryDigestOutlier" in proc.stdout + proc.stderr


def test_prometheusrule_carries_the_same_groups() -> None:
    """The operator's PrometheusRule is the plain rule file's groups (regenerate: make rules)."""
    plain = yaml.safe_load(RULES.read_text())
    crd = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert crd["apiVersion"] == "monitoring.coreos.com/v1" and crd["kind"] == "PrometheusRule"
    assert crd["spec"] == plain


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, every panel on the grid with at least one query, the data source and
    namespace variables it refers to exist."""
    d = dashboard()
    assert d["uid"] and d["title"] and d["panels"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in d["templating"]["list"]}
    for p in d["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        for t in p["targets"]:
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables, (p["title"], var)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses (each is checked by promtool as a recording rule), and
    every recorded series it reads is one the rule pack records."""
    d = dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$namespace", ".*")} for i, e in enumerate(exprs)
    ]
    f = tmp_path / "dashboard.rules.yaml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run_promtool("check", "rules", str(f))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recorded = {
        r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "record" in r
    }
    used = {name for e in exprs for name in re.findall(r"\btrt_health:[a-z0-9_:]+", e)}
    assert used and used <= recorded, used - recorded


def raw_metrics_read_by_the_pack() -> set[str]:
    """The sidecar's own series the rules and the dashboard read (histogram and counter
    suffixes mapped to the family name prometheus_client declares)."""
    text = RULES.read_text() + DASHBOARD.read_text()
    names = set(re.findall(r"\btrt_health_[a-z0-9_]+", text))
    return {re.sub(r"_(bucket|sum|count|total)$", "", n) for n in names}


def test_every_series_the_pack_reads_is_exported(
    tmp_path: Path, sidecar_proc: Callable[..., SidecarProcess]
) -> None:
    """A real `serve --simulate` declares every metric family the rules and the dashboard
    read, and a fatal fault shows as its readiness reason series (the per-reason fleet view)."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump({"gpus": [{}], "canary": {"mode": "ok"}}))
    sp = sidecar_proc("--simulate", "--scenario", str(scenario))
    wait_until(lambda: check(sp.addr, "readiness") == SERVING, timeout=30)

    def families() -> set[str]:
        with urllib.request.urlopen(f"{sp.http_base}/metrics", timeout=5) as r:
            text = r.read().decode()
        return set(re.findall(r"^# TYPE (\S+) ", text, re.M))

    declared = families()  # a family is declared (# TYPE) even before its first series
    missing = {n for n in raw_metrics_read_by_the_pack() if not {n, f"{n}_total"} & declared}
    assert not missing, missing

    tmp = scenario.with_name(".s.tmp")
    tmp.write_text(yaml.safe_dump({"gpus": [{"xid": [79]}], "canary": {"mode": "ok"}}))
    os.replace(tmp, scenario)

    def reason_series() -> str | None:
        with urllib.request.urlopen(f"{sp.http_base}/metrics", timeout=5) as r:
            text = r.read().decode()
        return text if 'trt_health_readiness_reason{reason="XidFatal79"} 1.0' in text else None

    wait_until(reason_series, timeout=15)
