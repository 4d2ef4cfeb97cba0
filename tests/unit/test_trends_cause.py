"""The cause labelling's inputs (sidecar/trends/cause.py), pure: the GPU facts reduced over this
pod's GPUs, the host probe's baseline, the growth of the violation times."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from sidecar.gpu.backend import UNSUPPORTED, GpuInfo, GpuSample, ProcessInfo
from sidecar.trends.cause import GpuContext, HostBaseline, ViolationGrowth, gpu_context


def sample(uuid: str = "GPU-0", **fields: object) -> GpuSample:
    return GpuSample(info=GpuInfo(0, uuid, "NVIDIA H200"), **fields)  # type: ignore[arg-type]


def samples(*ss: GpuSample) -> Mapping[str, tuple[float, GpuSample]]:
    return {s.info.uuid: (0.0, s) for s in ss}


NOTHING = GpuContext(
    clock_event_reasons=None,
    power_violation_s_delta=0.0,
    thermal_violation_s_delta=0.0,
    other_processes=0,
)


@pytest.mark.parametrize(
    ("gpus", "expected"),
    [
        pytest.param((), NOTHING, id="no GPU: no reasons known"),
        pytest.param(
            (sample(),),
            GpuContext(
                clock_event_reasons=0,
                power_violation_s_delta=0.0,
                thermal_violation_s_delta=0.0,
                other_processes=0,
            ),
            id="one GPU, nothing monitored",
        ),
        pytest.param(
            (sample("GPU-0", clock_event_reasons=0x4), sample("GPU-1", clock_event_reasons=0x40)),
            GpuContext(
                clock_event_reasons=0x44,
                power_violation_s_delta=0.0,
                thermal_violation_s_delta=0.0,
                other_processes=0,
            ),
            id="throttle reasons of every GPU",
        ),
        pytest.param(
            (
                sample("GPU-0", temperature_c=70, slowdown_threshold_c=90),
                sample("GPU-1", temperature_c=85, slowdown_threshold_c=UNSUPPORTED),
            ),
            GpuContext(
                clock_event_reasons=0,
                power_violation_s_delta=0.0,
                thermal_violation_s_delta=0.0,
                temperature_c=85.0,
                slowdown_c=None,
                other_processes=0,
            ),
            id="the hottest GPU with its own slowdown threshold",
        ),
        pytest.param(
            (
                sample("GPU-0", utilization_gpu_pct=30, processes=(ProcessInfo(1),)),
                sample(
                    "GPU-1",
                    utilization_gpu_pct=80,
                    processes=(ProcessInfo(1), ProcessInfo(2), ProcessInfo(3)),
                ),
            ),
            GpuContext(
                clock_event_reasons=0,
                power_violation_s_delta=0.0,
                thermal_violation_s_delta=0.0,
                other_processes=2,
                utilization=0.8,
            ),
            id="busiest GPU; the sidecar's own worker is not another process",
        ),
        pytest.param(
            (
                sample("GPU-0", sm_clock_mhz=1500, sm_clock_max_mhz=2000),
                sample("GPU-1", sm_clock_mhz=1800, sm_clock_max_mhz=2000),
                sample("GPU-2", sm_clock_mhz=100, sm_clock_max_mhz=0),
            ),
            GpuContext(
                clock_event_reasons=0,
                power_violation_s_delta=0.0,
                thermal_violation_s_delta=0.0,
                sm_clock_ratio=0.75,
                other_processes=0,
            ),
            id="lowest clock ratio; no maximum clock is no ratio",
        ),
    ],
)
def test_gpu_context_is_the_worst_over_the_gpus(gpus: tuple[GpuSample, ...], expected: GpuContext) -> None:
    assert gpu_context(samples(*gpus), ViolationGrowth(), None) == expected


def test_gpu_context_takes_the_largest_violation_growth_and_the_host_ratio() -> None:
    v = ViolationGrowth()
    a0, b0 = (
        sample("GPU-0", power_violation_s=1.0, thermal_violation_s=0.0),
        sample("GPU-1", power_violation_s=5.0),
    )
    a1, b1 = (
        sample("GPU-0", power_violation_s=1.5, thermal_violation_s=2.0),
        sample("GPU-1", power_violation_s=8.0),
    )
    for s in (a0, b0, a1, b1):
        v.note(s.info.uuid, s)
    ctx = gpu_context(samples(a1, b1), v, 1.7)
    assert (ctx.power_violation_s_delta, ctx.thermal_violation_s_delta, ctx.host_launch_ratio) == (
        3.0,
        2.0,
        1.7,
    )


@pytest.mark.parametrize(
    ("before", "after", "delta"),
    [
        pytest.param((1.0, 2.0), (1.5, 2.0), (0.5, 0.0), id="growth"),
        pytest.param((5.0, 5.0), (1.0, 6.0), (0.0, 1.0), id="a counter that went back grows by nothing"),
        pytest.param((1.0, UNSUPPORTED), (3.0, 4.0), (2.0, 0.0), id="unmonitored before: no growth"),
        pytest.param((1.0, 1.0), (UNSUPPORTED, UNSUPPORTED), (0.0, 0.0), id="unmonitored now: no growth"),
    ],
)
def test_violation_growth_between_two_samples(
    before: tuple[object, object], after: tuple[object, object], delta: tuple[float, float]
) -> None:
    v = ViolationGrowth()
    v.note("GPU-0", sample(power_violation_s=before[0], thermal_violation_s=before[1]))
    assert v.delta == {}  # one sample is no growth
    v.note("GPU-0", sample(power_violation_s=after[0], thermal_violation_s=after[1]))
    assert v.delta == {"GPU-0": delta}


def test_violation_growth_forgets_gpus_that_left() -> None:
    v = ViolationGrowth()
    for uuid in ("GPU-0", "GPU-1"):
        v.note(uuid, sample(uuid, power_violation_s=1.0))
        v.note(uuid, sample(uuid, power_violation_s=2.0))
    v.forget(lambda u: u == "GPU-1")
    assert (set(v.last), set(v.delta)) == ({"GPU-1"}, {"GPU-1"})


def test_host_baseline_is_the_median_of_the_first_twenty_and_the_ratio_the_last_five() -> None:
    h = HostBaseline()
    for _ in range(19):
        h.observe(1e-3)
    assert h.baseline is None and h.ratio() is None
    h.observe(1e-3)
    assert h.baseline == pytest.approx(1e-3) and h.ratio() == pytest.approx(1.0)
    for x in (9e-3, 2e-3, 2e-3, 2e-3, 1e-3):  # median of the last five: 2 ms
        h.observe(x)
    assert h.ratio() == pytest.approx(2.0)
    assert h.baseline == pytest.approx(1e-3)  # learned once


def test_host_baseline_of_zero_gives_no_ratio() -> None:
    h = HostBaseline()
    for _ in range(20):
        h.observe(0.0)
    assert h.baseline == 0.0 and h.ratio() is None
