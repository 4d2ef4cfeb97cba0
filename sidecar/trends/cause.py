"""The likely cause of a canary latency drift, from GPU facts read at the same time. Pure: no I/O,
no clock.

:func:`gpu_context` reduces the GPU component's latest samples (the worst over this pod's GPUs),
the growth of the throttling violation times (:class:`ViolationGrowth`) and the host-side probe
against its baseline (:class:`HostBaseline`) to a :class:`GpuContext`; :func:`likely_cause` names
the most probable cause from it (throttling, clocks, temperature, a slow host, a shared GPU).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sidecar.gpu.backend import GpuSample, value_or_none

# NVML clock-event (throttle) reason bits (nvmlClocksEventReason*)
CLOCK_EVENT_SW_POWER_CAP = 0x4
CLOCK_EVENT_HW_SLOWDOWN = 0x8
CLOCK_EVENT_SYNC_BOOST = 0x10
CLOCK_EVENT_SW_THERMAL = 0x20
CLOCK_EVENT_HW_THERMAL = 0x40
CLOCK_EVENT_HW_POWER_BRAKE = 0x80

CAUSES = ("power_throttle", "thermal_throttle", "clocks_low", "gpu_shared", "host_slow", "unknown")


@dataclass(frozen=True, slots=True)
class GpuContext:
    """GPU facts read at the time of a drift (None where unmonitored)."""

    clock_event_reasons: int | None = None
    power_violation_s_delta: float | None = None  # violation time grew by this much since last read
    thermal_violation_s_delta: float | None = None
    sm_clock_ratio: float | None = None  # current SM clock over its maximum
    temperature_c: float | None = None
    slowdown_c: float | None = None
    other_processes: int | None = None  # compute processes besides the sidecar's worker
    utilization: float | None = None  # 0..1
    host_launch_ratio: float | None = None  # host-side launch latency probe over its baseline


def likely_cause(ctx: GpuContext) -> str:
    """The most probable cause of a latency drift, one of :data:`CAUSES`.

    Order: what NVML reports directly (throttle reasons and violation time) first, then lower
    clocks, then a slow host (the host-side launch probe slowed as much), then sharing."""
    reasons = ctx.clock_event_reasons or 0
    if (
        reasons & (CLOCK_EVENT_HW_THERMAL | CLOCK_EVENT_SW_THERMAL)
        or (ctx.thermal_violation_s_delta or 0) > 0
    ):
        return "thermal_throttle"
    if (
        ctx.temperature_c is not None
        and ctx.slowdown_c is not None
        and ctx.temperature_c >= ctx.slowdown_c - 2
    ):
        return "thermal_throttle"
    if (
        reasons & (CLOCK_EVENT_SW_POWER_CAP | CLOCK_EVENT_HW_POWER_BRAKE | CLOCK_EVENT_HW_SLOWDOWN)
        or (ctx.power_violation_s_delta or 0) > 0
    ):
        return "power_throttle"
    if ctx.sm_clock_ratio is not None and ctx.sm_clock_ratio < 0.9:
        return "clocks_low"
    if ctx.host_launch_ratio is not None and ctx.host_launch_ratio > 1.2:
        return "host_slow"
    if (ctx.other_processes or 0) > 0 or (ctx.utilization or 0) > 0.5:
        return "gpu_shared"
    return "unknown"


class HostBaseline:
    """The host-side probe's recent times and its baseline (the median of the first 20)."""

    WARMUP = 20

    def __init__(self) -> None:
        self.recent: deque[float] = deque(maxlen=64)
        self.baseline: float | None = None

    def observe(self, seconds: float) -> None:
        self.recent.append(seconds)
        if self.baseline is None and len(self.recent) >= self.WARMUP:
            self.baseline = statistics.median(self.recent)

    def ratio(self) -> float | None:
        """The median of the last five probes over the baseline; None before the baseline."""
        if self.baseline and self.recent:
            return statistics.median(list(self.recent)[-5:]) / self.baseline
        return None


class ViolationGrowth:
    """Per GPU: how much the power and thermal violation times grew between its last two samples."""

    def __init__(self) -> None:
        # uuid -> violation times (power, thermal) at the previous sample, and their growth since
        self.last: dict[str, tuple[float | None, float | None]] = {}
        self.delta: dict[str, tuple[float, float]] = {}

    def note(self, uuid: str, sample: GpuSample) -> None:
        now = (value_or_none(sample.power_violation_s), value_or_none(sample.thermal_violation_s))
        before = self.last.get(uuid)
        self.last[uuid] = now
        if before is None:
            return
        growth = [
            max(0.0, n - b) if n is not None and b is not None else 0.0
            for n, b in zip(now, before, strict=True)
        ]
        self.delta[uuid] = (growth[0], growth[1])

    def forget(self, keep: Callable[[str], bool]) -> None:
        """Drop the GPUs ``keep`` rejects (they left the inventory)."""
        for gone in [u for u in self.last if not keep(u)]:
            self.last.pop(gone, None)
            self.delta.pop(gone, None)


def gpu_context(
    samples: Mapping[str, tuple[float, GpuSample]],
    violations: ViolationGrowth,
    host_launch_ratio: float | None,
) -> GpuContext:
    """GPU facts now (the worst over this pod's GPUs) for :func:`likely_cause`."""
    reasons = 0
    temp = slowdown = util = None
    clock_ratio: float | None = None
    procs = 0
    power_delta = thermal_delta = 0.0
    for uuid, (_, s) in samples.items():
        reasons |= value_or_none(s.clock_event_reasons) or 0
        t = value_or_none(s.temperature_c)
        sd = value_or_none(s.slowdown_threshold_c)
        if t is not None and (temp is None or t > temp):
            temp, slowdown = float(t), None if sd is None else float(sd)
        u = value_or_none(s.utilization_gpu_pct)
        if u is not None:
            util = max(util or 0.0, u / 100.0)
        p = value_or_none(s.processes)
        if p is not None:
            procs = max(procs, max(0, len(p) - 1))  # the sidecar's own worker is one of them
        cur = value_or_none(s.sm_clock_mhz)
        top = value_or_none(s.sm_clock_max_mhz)
        if cur is not None and top:
            r = cur / top
            clock_ratio = r if clock_ratio is None else min(clock_ratio, r)
        dp, dt = violations.delta.get(uuid, (0.0, 0.0))
        power_delta, thermal_delta = max(power_delta, dp), max(thermal_delta, dt)
    return GpuContext(
        clock_event_reasons=reasons if samples else None,
        power_violation_s_delta=power_delta,
        thermal_violation_s_delta=thermal_delta,
        sm_clock_ratio=clock_ratio,
        temperature_c=temp,
        slowdown_c=slowdown,
        other_processes=procs,
        utilization=util,
        host_launch_ratio=host_launch_ratio,
    )
