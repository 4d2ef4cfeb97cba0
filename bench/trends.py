"""Benchmark: the trend detectors on synthetic and recorded traces (no server, no GPU).

For the latency drift detector (sidecar/trends/detectors.py, default settings):

- **false alarms** on stationary noise: Gaussian noise at several coefficients of variation
  (cv), and heavy-tailed noise (a log-normal body with 1 % spikes of 2-5x, what a shared host
  produces), counted per 10,000 samples after the baseline (target <= 1 per 10,000);
- **detection delay** for a 5 % step of the mean (samples after the step until the alarm;
  target <= 30 canaries), at the same noise levels, median and worst over many seeds;
- with ``--trace FILE`` (one latency in seconds per line, e.g. recorded on the GPU by
  ``bench.gpu``), the same two figures on the recorded noise: the trace as it is, and the trace
  with a 5 % step added at random points.

For the counter trend: the delay until a corrected-ECC rate of 30/h is flagged (threshold
10/h), and the forecast error of the time to a fatal threshold for a linear ramp.

Usage: ``python -m bench.trends [--seeds N] [--samples N] [--trace FILE]``; prints a Markdown
table. Deterministic (seeded numpy generators).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sidecar.trends.detectors import CounterSettings, CounterTrend, DriftSettings, LatencyDrift

BASE_S = 0.000_144  # the int8 GEMM canary's p50 on the H200 (../shared/GPU.md)
STEP = 0.05


@dataclass(frozen=True)
class NoiseModel:
    name: str
    cv: float
    heavy: bool = False

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.heavy:
            body = BASE_S * rng.lognormal(0.0, self.cv, n)
            spikes = rng.random(n) < 0.01
            body[spikes] *= rng.uniform(2.0, 5.0, int(spikes.sum()))
            return body
        return np.maximum(BASE_S * (1.0 + self.cv * rng.standard_normal(n)), BASE_S * 0.05)


MODELS = (
    NoiseModel("gaussian cv 0.3 % (int8 GEMM on H200)", 0.003),
    NoiseModel("gaussian cv 1 %", 0.01),
    NoiseModel("gaussian cv 3 %", 0.03),
    NoiseModel("gaussian cv 5 %", 0.05),
    NoiseModel("log-normal cv 1 % + 1 % spikes 2-5x", 0.01, heavy=True),
    NoiseModel("log-normal cv 3 % + 1 % spikes 2-5x", 0.03, heavy=True),
)


def false_alarms(series: Iterable[float], settings: DriftSettings) -> tuple[int, int]:
    """Alarms raised and samples judged (after the baseline) on a series with no shift."""
    d = LatencyDrift(settings)
    alarms = judged = 0
    for x in series:
        r = d.observe(float(x))
        if r.baseline is not None:
            judged += 1
        if r.started:
            alarms += 1
    return alarms, judged


def delay(series: Iterable[float], step_at: int, settings: DriftSettings) -> int | None:
    """Samples after ``step_at`` until the alarm (None: never); series already stepped."""
    d = LatencyDrift(settings)
    for i, x in enumerate(series):
        r = d.observe(float(x))
        if r.started:
            return i - step_at if i >= step_at else -1  # -1: a false alarm before the step
    return None


def latency_stats(seeds: int, samples: int) -> list[dict[str, Any]]:
    """Per noise model: false alarms per 10,000 judged samples and the 5 % step's delays."""
    settings = DriftSettings()
    out = []
    for m in MODELS:
        fa = judged = 0
        delays: list[int] = []
        missed = early = 0
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            a, j = false_alarms(m.draw(rng, samples), settings)
            fa += a
            judged += j
            s = m.draw(rng, settings.warmup + 200)
            at = settings.warmup + 50
            s[at:] *= 1.0 + STEP
            dl = delay(s, at, settings)
            if dl is None:
                missed += 1
            elif dl < 0:
                early += 1
            else:
                delays.append(dl)
        out.append(
            {
                "model": m.name,
                "cv": m.cv,
                "heavy": m.heavy,
                "false_alarms": fa,
                "judged": judged,
                "per_10k": fa / judged * 10_000 if judged else math.nan,
                "delay_p50": statistics.median(delays) if delays else None,
                "delay_max": max(delays) if delays else None,
                "missed": missed,
                "early": early,
                "seeds": seeds,
            }
        )
    return out


def latency_rows(seeds: int, samples: int) -> list[list[str]]:
    return [
        [
            r["model"],
            f"{r['per_10k']:.2f} ({r['false_alarms']} in {r['judged']:,})",
            "-" if r["delay_p50"] is None else f"{r['delay_p50']:.0f}",
            "-" if r["delay_max"] is None else f"{r['delay_max']}",
            f"{r['missed']}/{r['seeds']}",
            f"{r['early']}/{r['seeds']}",
        ]
        for r in latency_stats(seeds, samples)
    ]


def trace_rows(path: Path, seeds: int) -> list[list[str]]:
    settings = DriftSettings()
    trace = np.array([float(x) for x in path.read_text().split() if x.strip()])
    a, j = false_alarms(trace, settings)
    delays: list[int] = []
    missed = 0
    rng = np.random.default_rng(0)
    span = len(trace) - settings.warmup - 60
    for _ in range(seeds if span > 0 else 0):
        at = settings.warmup + 10 + int(rng.integers(0, span))
        s = trace.copy()
        s[at:] *= 1.0 + STEP
        dl = delay(s[: at + 200], at, settings)
        if dl is None or dl < 0:
            missed += 1
        else:
            delays.append(dl)
    return [
        [
            f"recorded trace {path.name} ({len(trace):,} samples)",
            f"{a / j * 10_000:.2f} ({a} in {j:,})" if j else "-",
            f"{statistics.median(delays):.0f}" if delays else "-",
            f"{max(delays)}" if delays else "-",
            f"{missed}/{seeds}",
            "-",
        ]
    ]


def counter_rows() -> list[list[str]]:
    rows = []
    settings = CounterSettings(rate_per_hour=10.0, min_span_s=600.0)
    for rate in (5.0, 30.0, 120.0):
        c = CounterTrend(settings)
        flagged_at: float | None = None
        value = 0.0
        for step in range(0, 12 * 3600, 30):  # one sample every 30 s for 12 h
            value += rate / 120.0
            r = c.observe(float(step), math.floor(value))
            if r.rising and flagged_at is None:
                flagged_at = step
        rows.append(
            [
                f"corrected ECC at {rate:.0f}/h (threshold 10/h)",
                "never flagged" if flagged_at is None else f"flagged after {flagged_at / 60:.0f} min",
            ]
        )
    ramp = CounterSettings(rate_per_hour=1e9, fatal_threshold=1000.0, min_span_s=600.0)
    c = CounterTrend(ramp)
    reading = None
    for step in range(0, 3600 * 4, 60):
        reading = c.observe(float(step), 50.0 * step / 3600.0)  # 50/h towards 1000
    assert reading is not None and reading.seconds_to_threshold is not None
    true_eta = (1000.0 - 50.0 * (3600 * 4 - 60) / 3600.0) / 50.0 * 3600.0
    err = abs(reading.seconds_to_threshold - true_eta) / true_eta
    rows.append(["forecast to a threshold of 1,000 on a 50/h ramp", f"error {err * 100:.2f} %"])
    return rows


LATENCY_HEADER = [
    "noise",
    "false alarms per 10,000",
    "delay p50 (canaries)",
    "delay max",
    "missed",
    "alarm before step",
]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.trends")
    ap.add_argument("--seeds", type=int, default=200, help="step traces per noise model")
    ap.add_argument("--samples", type=int, default=20_000, help="stationary samples per seed")
    ap.add_argument("--trace", type=Path, help="recorded latencies, one per line (seconds)")
    args = ap.parse_args(argv)
    rows = latency_rows(args.seeds, args.samples)
    if args.trace:
        rows += trace_rows(args.trace, args.seeds)
    s = DriftSettings()
    print(f"Latency drift (CUSUM k={s.k}, h={s.h}, clip={s.clip}, warmup={s.warmup}), 5 % step:\n")
    print(table(LATENCY_HEADER, rows))
    print("\nCounter trends:\n")
    print(table(["case", "result"], counter_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
