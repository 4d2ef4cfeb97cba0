"""What one canary request came to, as the supervisor hands it to the judge.

Plain values (no process, no I/O): the supervisor builds them from the worker's replies and
its own deadlines; :mod:`sidecar.canary.judge` turns them into check results.
"""

from __future__ import annotations

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
