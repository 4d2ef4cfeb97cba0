"""``engine inspect FILE``: what the plan header and the manifest say, and what this machine
would decide (the same verification the sidecar runs)."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidecar.config import ConfigError
from sidecar.engine.cli.common import EXIT_OK, EXIT_PROBLEMS, UsageError
from sidecar.engine.config import EnginesConfig, EngineSpec
from sidecar.engine.files import MISSING, path_problem
from sidecar.engine.manifest import read_manifest
from sidecar.engine.plan import read_plan_header

__all__ = ["default_manifest_path", "inspect_command", "inspect_engine"]


def default_manifest_path(file: Path) -> Path | None:
    for cand in (file.with_name(file.name + ".manifest.yaml"), file.parent / "manifest.yaml"):
        if cand.exists():
            return cand
    return None


def inspect_engine(
    file: Path,
    manifest: Path | None,
    *,
    tensorrt_version: str | None = None,
    compute_capability: str | None = None,
    hash_timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Everything ``engine inspect`` reports, as a JSON-able dict; ``problems`` lists reasons."""
    from sidecar.engine.component import EngineComponent

    report: dict[str, Any] = {"file": str(file), "manifest": str(manifest) if manifest else None}
    # stat before any open: a FIFO would block, a device or a folder is no engine
    problem = path_problem(file)
    if problem is not None:
        report["file_kind"] = problem
    else:
        try:
            report["header"] = read_plan_header(file).to_dict()
        except OSError as exc:
            report["header"] = {"error": str(exc)}
    if manifest is not None:
        try:
            report["manifest_content"] = read_manifest(manifest).to_dict()
        except (ConfigError, OSError) as exc:
            report["manifest_error"] = str(exc)
    spec = EngineSpec("inspect", manifest=manifest) if manifest else EngineSpec("inspect", file=file)
    cfg = EnginesConfig(
        engines=(spec,),
        hash_timeout_s=hash_timeout_s,
        hash_min_interval_s=0.0,
        stable_window_s=0.2,
        tensorrt_version=tensorrt_version,
        compute_capability=compute_capability,
    )
    comp = EngineComponent(cfg, registry=CollectorRegistry())
    check = comp.checks()[0]
    results = asyncio.run(_run_once(check))
    decisions = []
    for r in results:
        decisions.append(
            {
                "condition": r.name.split("/", 2)[-1],
                "status": r.status.value,
                "severity": r.severity.name.lower(),
                "reason": r.reason,
                "message": r.message,
            }
        )
    report["decisions"] = decisions
    report["problems"] = sorted(
        {d["reason"] for d in decisions if d["status"] != "ok" and d["severity"] != "info"}
    )
    return report


async def _run_once(check: Any) -> list[Any]:
    return list(await check.run())


def inspect_command(args: argparse.Namespace) -> int:
    file: Path = args.file
    manifest: Path | None = args.manifest
    if manifest is not None:
        problem = path_problem(manifest)
        if problem == MISSING:
            raise UsageError(f"--manifest: {manifest} does not exist")
        if problem is not None:
            raise UsageError(f"--manifest: {manifest} is {problem}, not a regular file")
    if manifest is None:
        manifest = default_manifest_path(file)
    report = inspect_engine(
        file,
        manifest,
        tensorrt_version=args.tensorrt_version,
        compute_capability=args.compute_capability,
        hash_timeout_s=args.hash_timeout,
    )
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        kind = report.get("file_kind")
        print(f"file:      {file}" + (f"  ({kind})" if kind else ""))
        print(f"manifest:  {manifest or '(none found)'}")
        hdr = report.get("header") or {}
        if hdr:
            print(
                f"header:    plan={hdr.get('is_plan')} tensorrt={hdr.get('tensorrt_version')} "
                f"{hdr.get('problem') or ''}  (header layout is advisory)"
            )
        if "manifest_error" in report:
            print(f"manifest error: {report['manifest_error']}")
        for d in report["decisions"]:
            flag = "ok  " if d["status"] == "ok" else d["status"].upper()[:4]
            print(f"  {flag} {d['condition']:<9} {d['reason'] or '-':<24} {d['message']}")
        print("verdict:   " + ("OK" if not report["problems"] else ", ".join(report["problems"])))
    return EXIT_PROBLEMS if report["problems"] else EXIT_OK
