"""Benchmark: verdict -> action -> server state, against a real MLServer (CPU only).

Two sequences, each timed from the evidence to the server state verified (the model repository
index and a real inference on the version that should answer):

- **rollback**: a real EngineComponent watches real engine files; version 1 verifies; version
  2 is written with a file that does not match its manifest's sha256. Timed: the file write ->
  the engine component's failing checksum result (the verdict) -> the actions component's
  calls (park + ``POST .../load``) -> ``/v2/repository/index`` lists only 1 and an inference
  answers from version 1;
- **degrade / restore**: GPU memory headroom under ``min_free_mib`` (the GPU component's
  ``gpu/<uuid>/memory`` result) with ``enter_after`` and ``restore_after`` windows on the real
  clock; timed: pressure seen -> fallback serving, and pressure gone -> primary serving again.

Usage: ``TRT_HEALTH_TEST_MLSERVER=.venv-mlserver/bin/mlserver python -m bench.actions
[--enter-after S] [--restore-after S] [--repeat N]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.actions.component import ActionsComponent
from sidecar.actions.config import parse_actions_config
from sidecar.actions.report import ActionRecord
from sidecar.config import Section
from sidecar.core.values import CheckResult, Severity
from sidecar.engine.config import EngineSpec
from sidecar.testing.engine import config, plan_bytes, started, write_engine
from sidecar.testing.mlserver import MLServer, index, infer_version, mlserver_exe, running_mlserver


def _actions(server: MLServer, model: str, **raw: Any) -> ActionsComponent:
    errors: list[str] = []
    doc: dict[str, Any] = {
        "enabled": True,
        "server": "mlserver",
        "url": server.url,
        "repository_dir": str(server.root / model),
        "engines": [{"engine": model, "model": model, "rollback": True}],
        "rollback": {"backoff_initial": 0},
    }
    doc.update(raw)
    cfg = parse_actions_config(Section(doc, "actions", errors))
    if errors:
        raise SystemExit("; ".join(errors))
    return ActionsComponent(cfg, registry=CollectorRegistry())


async def rollback_once(server: MLServer, folder: Path, model: str) -> dict[str, float]:
    actions = _actions(server, model)
    m = write_engine(folder, plan_bytes(1), name=model, version="1")
    comp, sink = await started(
        config(EngineSpec(model, manifest=m), tensorrt_version="10.13.0.35"),
        gpu_compute_capability=lambda: "9.0",
        gpu_free_memory_bytes=lambda: 80 << 30,
    )
    try:
        await sink.wait_for(lambda r: r.name == f"engine/{model}/change" and r.ok, within=30)
        actions.observe(r for _, r in sink.log)
        await actions.tick()
        mark = len(sink.log)
        t_write = time.monotonic()
        write_engine(folder, plan_bytes(2), name=model, version="2", sha256="0" * 64)
        t_verdict, _ = await sink.wait_for(
            lambda r: r.name == f"engine/{model}/checksum" and not r.ok and r.labels.get("version") == "2",
            within=30,
            after=t_write,
        )
        actions.observe(r for _, r in sink.log[mark:])
        await actions.tick()
        rec = actions.history[-1]
        if (rec.kind, rec.outcome) != ("rollback", "ok") or index(server.url, model) != ["1"]:
            raise SystemExit(f"rollback did not happen: {rec}")
        version, _ = infer_version(server.url, model)
        t_state = time.monotonic()
        if version != "1":
            raise SystemExit(f"version {version} answered after the rollback")
        return {
            "file -> verdict": t_verdict - t_write,
            "verdict -> action": rec.started_at - t_verdict,
            "calls (park + load)": rec.called_at - rec.started_at,
            "server state verified": rec.verified_at - rec.called_at,
            "verdict -> server state": t_state - t_verdict,
        }
    finally:
        await comp.stop()
        await actions.stop()


async def _tick_until(actions: ActionsComponent, kind: str, limit_s: float) -> ActionRecord:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        await actions.tick()
        if actions.history and actions.history[-1].kind == kind:
            return actions.history[-1]
        await asyncio.sleep(0.02)
    raise SystemExit(f"no {kind} within {limit_s}s")


def _engine(engine: str, version: str, **extra: str) -> list[CheckResult]:
    labels = {"engine": engine, "version": version, "sha256": "a" * 64, **extra}
    return [
        CheckResult.passed(f"engine/{engine}/{s}", labels=labels)
        for s in ("manifest", "file", "checksum", "plan", "version", "arch")
    ]


async def degrade_once(server: MLServer, model: str, enter_s: float, restore_s: float) -> dict[str, float]:
    actions = _actions(
        server,
        model,
        engines=[{"engine": model, "model": model, "degrade": True}],
        degrade={"enter_after": enter_s, "restore_after": restore_s, "min_free_mib": 1000},
    )
    fb = f"{model}-fallback"
    high = CheckResult.passed("gpu/GPU-0/memory", value=50_000.0, severity=Severity.WARNING)
    low = CheckResult.passed("gpu/GPU-0/memory", value=100.0, severity=Severity.WARNING)
    try:
        actions.observe([*_engine(model, "2", fallback=fb), *_engine(fb, "0"), high])
        actions.observe([CheckResult.passed(f"canary/engine/{fb}")])
        await actions.tick()
        t_pressure = time.monotonic()
        actions.observe([low])
        rec = await _tick_until(actions, "degrade", enter_s + 30)
        if (
            rec.outcome != "ok"
            or index(server.url, model) != ["0"]
            or infer_version(server.url, model)[0] != "0"
        ):
            raise SystemExit(f"degrade did not happen: {rec}")
        t_degraded = time.monotonic()
        t_clear = time.monotonic()
        actions.observe([high])
        back = await _tick_until(actions, "restore", restore_s + 30)
        if back.outcome != "ok" or infer_version(server.url, model)[0] != "2":
            raise SystemExit(f"restore did not happen: {back}")
        t_restored = time.monotonic()
        return {
            "pressure -> fallback serving": t_degraded - t_pressure,
            "degrade calls + verification": rec.verified_at - rec.started_at,
            "pressure gone -> primary serving": t_restored - t_clear,
            "restore calls + verification": back.verified_at - back.started_at,
        }
    finally:
        await actions.stop()


async def run(enter_s: float, restore_s: float, repeat: int) -> dict[str, list[float]]:
    models = {f"rb{i}": ["1", "2"] for i in range(repeat)}
    models.update({f"fb{i}": ["0", "2"] for i in range(repeat)})
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, running_mlserver(Path(tmp) / "repo", models) as server:
        for i in range(repeat):
            folder = Path(tmp) / f"engine{i}"
            folder.mkdir()
            for k, v in (await rollback_once(server, folder, f"rb{i}")).items():
                out.setdefault(f"rollback: {k}", []).append(v)
            for k, v in (await degrade_once(server, f"fb{i}", enter_s, restore_s)).items():
                out.setdefault(f"degrade: {k}", []).append(v)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.actions")
    ap.add_argument("--enter-after", type=float, default=1.0, help="degrade.enter_after (s)")
    ap.add_argument("--restore-after", type=float, default=2.0, help="degrade.restore_after (s)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if mlserver_exe() is None:
        print("MLServer not available: set TRT_HEALTH_TEST_MLSERVER", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)  # the action log lines are not the output
    got = asyncio.run(run(args.enter_after, args.restore_after, args.repeat))
    print(f"enter_after {args.enter_after:g} s, restore_after {args.restore_after:g} s, {args.repeat} runs\n")
    print("| step | median ms | max ms |")
    print("|---|---:|---:|")
    for k, vs in got.items():
        print(f"| {k} | {statistics.median(vs) * 1e3:.1f} | {max(vs) * 1e3:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
