"""The conditions of one GPU sample: every per-GPU signal's builder, called with what the
tracker folded (latches held, recent Xids, rate increases, how long the clocks were slowed).
Pure, like the builders."""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.core.values import CheckResult
from sidecar.gpu.backend import ComputeMode, GpuSample, value_or_none
from sidecar.gpu.conditions import ecc_result, lost_result, recovery_action_result, remap_result
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.env_conditions import (
    compute_mode_result,
    events_result,
    memory_result,
    pcie_result,
    thermal_result,
)
from sidecar.gpu.fold import GpuTrack
from sidecar.gpu.latchstate import Latch
from sidecar.gpu.xid_conditions import xid_result


def sample_results(
    cfg: GpuConfig,
    st: GpuTrack,
    sample: GpuSample,
    held: Sequence[Latch],
    now: float,
    corrected_increase: int,
    replay_increase: int,
) -> list[CheckResult]:
    """Every condition of one GPU from one sample and what the tracker folded from it."""
    ref = st.ref
    by_kind = {x.kind: x for x in held}
    slowdown = cfg.thermal_slowdown_c
    if slowdown is None and isinstance(sample.slowdown_threshold_c, int):
        slowdown = float(sample.slowdown_threshold_c)
    shutdown = cfg.thermal_shutdown_c
    if shutdown is None and isinstance(sample.shutdown_threshold_c, int):
        shutdown = float(sample.shutdown_threshold_c)
    results = [
        lost_result(ref, latch=by_kind.get("lost"), reset_required=st.reset_required),
        xid_result(ref, held, list(st.recent), now=now, window_s=cfg.xid_report_window_s),
        ecc_result(
            ref,
            sample.ecc,
            latch=by_kind.get("ecc"),
            contained=st.ecc_contained,
            corrected_increase=corrected_increase,
            corrected_warn=cfg.ecc_corrected_warn,
            corrected_window_s=cfg.ecc_corrected_window_s,
        ),
        remap_result(ref, sample.remap, sample.retired_pages_pending, latch=by_kind.get("remap")),
        recovery_action_result(
            ref,
            sample.recovery_action,
            multi_gpu_model=cfg.multi_gpu_model,
            multi_node_nvlink=cfg.multi_node_nvlink,
        ),
        thermal_result(
            ref,
            sample.temperature_c,
            slowdown,
            shutdown,
            clock_reasons=sample.clock_event_reasons,
            hw_slowdown_for_s=None if st.hw_slowdown_since is None else now - st.hw_slowdown_since,
            sustain_s=cfg.thermal_sustain_s,
        ),
        memory_result(
            ref,
            sample.memory,
            sample.processes,
            required_mib=cfg.required_memory_mib,
            exclusive_process=value_or_none(sample.compute_mode) == ComputeMode.EXCLUSIVE_PROCESS,
        ),
        compute_mode_result(ref, sample.compute_mode),
        pcie_result(
            ref,
            sample.pcie_replay_count,
            increase=replay_increase,
            warn=cfg.pcie_replay_warn,
            window_s=cfg.pcie_replay_window_s,
        ),
    ]
    if cfg.events:
        reg = st.registration
        results.append(
            events_result(ref, registered=reg.registered, unsupported=reg.unsupported, error=reg.error)
            if reg is not None
            else events_result(ref, registered=0, unsupported=0, error="not registered")
        )
    return results
