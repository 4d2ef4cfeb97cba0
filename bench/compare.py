"""Footprint and probe cost of this tree against a baseline commit, run side by side.

``python -m bench.compare --baseline REV [--rounds N] [--idle S]`` checks REV out into a
temporary git worktree and alternates the two trees round by round (A, B, A, B ...), so a load
change on the machine hits both equally. Each round runs, in a fresh interpreter whose working
directory and ``PYTHONPATH`` are that tree: ``bench.footprint.footprint`` (exec → ``startup``
and ``readiness`` SERVING, idle CPU and RSS of the serving process) and
``bench.footprint.probe_cost`` (wall and CPU time of one ``python -m sidecar probe``). It prints
the medians of each tree and the ratio this/baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import procs

_SNIPPET = """
import json, sys
from bench import footprint
quick = sys.argv[1] == "quick"
out = {"footprint": footprint.footprint(quick=quick), "probe": footprint.probe_cost(quick=True)}
print("RESULT " + json.dumps(out))
"""


def _run_tree(tree: Path, idle_quick: bool) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run(
        [sys.executable, "-c", _SNIPPET, "quick" if idle_quick else "full"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"{tree}: no result (exit {proc.returncode}): {proc.stderr[-2000:]}")


def _metrics(r: dict[str, Any]) -> dict[str, float]:
    fp = r["footprint"]
    probe = r["probe"].get("python -m sidecar probe", {})
    return {
        "startup SERVING s": float(fp["startup_serving_s"]),
        "readiness SERVING s": float(fp["readiness_serving_s"] or "nan"),
        "idle CPU % of a core": float(fp["serving"]["idle_cpu_pct"]),
        "RSS MB": float(fp["serving"]["rss_mb"]),
        "threads": float(fp["serving"]["threads"]),
        "probe wall p50 ms": float(probe.get("wall_ms_p50", "nan")),
        "probe CPU p50 ms": float(probe.get("cpu_ms_p50", "nan")),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare")
    p.add_argument("--baseline", required=True, help="git revision to compare against")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--full", action="store_true", help="60 s idle windows instead of 10 s")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(procs.REPO), "worktree", "add", "--detach", "-q", str(base), a.baseline],
            check=True,
        )
        try:
            trees = {"baseline": base, "this": procs.REPO}
            samples: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
            for i in range(a.rounds):
                for label, tree in trees.items():
                    print(f"round {i + 1}/{a.rounds}: {label} ({tree})", flush=True)
                    samples[label].append(_metrics(_run_tree(tree, not a.full)))
        finally:
            subprocess.run(
                ["git", "-C", str(procs.REPO), "worktree", "remove", "--force", str(base)], check=False
            )
    rev = subprocess.run(
        ["git", "-C", str(procs.REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(f"\n| metric (median of {a.rounds}) | baseline {a.baseline} | this {rev} | this / baseline |")
    print("|---|---:|---:|---:|")
    for key in samples["this"][0]:
        b = statistics.median(s[key] for s in samples["baseline"])
        t = statistics.median(s[key] for s in samples["this"])
        ratio = t / b if b else float("nan")
        print(f"| {key} | {b:.3f} | {t:.3f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
