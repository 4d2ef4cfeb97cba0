"""What one canary request came to, as the supervisor hands it to the judge.

Plain values (no process, no I/O): the supervisor builds them from the worker's replies and
its own deadlines; :mod:`sidecar.canary.judge` turns them into check results. Also what a
worker's exit status says and the restart backoff (pure functions the supervisor uses).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

import numpy as np

from sidecar.canary.protocol import WorkerError


@dataclass(frozen=True, slots=True)
class Death:
    """Why a worker went away. ``cause`` is the bounded metric label."""

    cause: str
    reason: str
    message: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """One canary request: outputs on success, else an error and possibly a death."""

    ok: bool
    runner: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    production_outputs: dict[str, np.ndarray] | None = None  # the one-engine form's reply
    # each loaded production engine's outputs, by its manifest path (ProductionSpec.manifest)
    engine_outputs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    latency_s: float = 0.0
    warmup_s: float = 0.0
    rss_bytes: int = 0
    error: WorkerError | None = None
    death: Death | None = None


def backoff_delay(failures: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff: 0 before any failure, then initial, 2x initial ... capped."""
    if failures <= 0:
        return 0.0
    return float(min(max_s, initial_s * (2 ** min(failures - 1, 30))))


def describe_exit(returncode: int | None) -> tuple[str, str]:
    """(cause label, message) for a worker exit status."""
    if returncode is None:
        return "unknown", "worker ended, exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return name, f"worker killed by {name}"
    return f"exit_{returncode}", f"worker exited with code {returncode}"
