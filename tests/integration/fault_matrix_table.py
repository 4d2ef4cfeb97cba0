"""The fault matrix: one row per fault, run by tests/integration/test_fault_matrix.py against a
running ``serve --simulate`` process, and rendered into docs/fault-matrix.md.

``python -m tests.integration.fault_matrix_table --markdown > docs/fault-matrix.md`` regenerates
the document; ``test_fault_matrix_doc_in_sync`` fails when it is stale.

A row is pure data: the scenario document merged over the healthy one (``scenario``), or the
name of an action the suite performs (``action``: engine files, the workload endpoint, the
config file, a restart), the services expected while the fault holds, the reasons expected on
conditions, one metric, and how it recovers:

- ``clear``: the fault is removed from the scenario (or the file / endpoint restored) and every
  service returns to SERVING by itself;
- ``sticky``: after the fault is removed the condition stays failing (checked for ``hold_s``),
  until the evidence named in ``evidence`` arrives (a scenario ``reset`` change); then it clears.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

UUID = "GPU-sim-0"
GPU = f"gpu/{UUID}"
ENGINE = "prod"
FALLBACK = "prod-fallback"  # the actions rows' fallback engine: ONNX, so it has its own canary
FALLBACK_CANARY = f"canary/engine/{FALLBACK}"

S, N = "SERVING", "NOT_SERVING"

# The services every row asserts. Rows override the ones their fault changes.
ALL_SERVING: dict[str, str] = {
    "readiness": S,
    "liveness": S,
    "startup": S,
    "gpu": S,
    GPU: S,
    "canary": S,
    f"engine/{ENGINE}": S,
    "workload-liveness": S,
}
GPU_DOWN = {"readiness": N, "gpu": N, GPU: N}


@dataclass(frozen=True)
class Row:
    id: str
    fault: str
    injection: str  # how the suite injects it (also the docs column)
    expect: dict[str, str]  # service -> SERVING / NOT_SERVING (overrides ALL_SERVING)
    reasons: dict[str, str]  # condition -> reason
    metric: str  # "NAME{label="v"} OP VALUE"; OP one of == >= ; "+=" means increased by >= VALUE
    recovery: str = "clear"  # clear | sticky
    evidence: str = ""  # what clears a sticky fault
    group: str = "main"
    scenario: dict[str, Any] | None = None
    gpu: dict[str, Any] = field(default_factory=dict)  # merged into gpus[0] of the scenario
    # gpus[0] fields that stay when the fault is removed: counters never go back without a
    # reset (a volatile ECC counter going down is itself evidence of a reset)
    keep: dict[str, Any] = field(default_factory=dict)
    action: str = ""
    detect_s: float = 3.0
    recover_s: float = 6.0
    hold_s: float = 0.8
    xfail: str = ""  # a known bug: strict xfail with this reason
    # actions rows: the versions the main server (a real MLServer) lists while the fault holds
    served: str = ""

    def services(self) -> dict[str, str]:
        out = dict(ALL_SERVING)
        out.update(self.expect)
        return out


def _xid(code: int, cls: str, reason: str, fatal: bool) -> Row:
    return Row(
        id=f"xid-{code}-{cls}",
        fault=f"Xid {code} ({cls.replace('_', '-')})",
        injection=f"`gpus: [{{xid: [{code}]}}]`",
        gpu={"xid": [code]},
        expect=GPU_DOWN if fatal else {},
        reasons={f"{GPU}/xid": reason},
        metric=f'trt_health_gpu_xid_events_total{{code="{code}",class="{cls}"}} += 1',
        recovery="sticky" if fatal else "clear",
        evidence="scenario `reset` changed (GPU reset observed)" if fatal else "",
    )


ROWS: tuple[Row, ...] = (
    _xid(79, "node_fatal", "XidFatal79", True),
    _xid(48, "gpu_fatal", "XidGpuReset48", True),
    _xid(95, "gpu_fatal", "XidGpuReset95", True),
    _xid(119, "gpu_fatal", "XidGpuReset119", True),
    _xid(31, "process", "XidProcess31", False),
    _xid(13, "process", "XidProcess13", False),
    _xid(94, "process", "XidProcess94", False),
    _xid(45, "info", "XidInfo45", False),  # INFO: reported for xid_report_window, never gating
    _xid(63, "warning", "XidWarning63", False),
    _xid(201, "unknown", "XidUnknown201", False),
    _xid(74, "nvlink", "XidNvlink74", False),
    Row(
        id="ecc-uncorrectable",
        fault="uncorrectable ECC increase (no Xid)",
        injection="`gpus: [{ecc_volatile_uncorrected: 1}]`",
        gpu={"ecc_volatile_uncorrected": 1},
        keep={"ecc_volatile_uncorrected": 1},
        expect=GPU_DOWN,
        reasons={f"{GPU}/ecc": "EccUncorrectable"},
        metric='trt_health_gpu_ecc_events_total{type="double_bit"} += 1',
        recovery="sticky",
        evidence="scenario `reset` changed (volatile counter restarts); the counter stays at 1",
    ),
    Row(
        id="ecc-uncontained-xid95",
        fault="uncorrectable ECC with Xid 95 (uncontained)",
        injection="`gpus: [{xid: [95], ecc_volatile_uncorrected: 1}]`",
        gpu={"xid": [95], "ecc_volatile_uncorrected": 1},
        keep={"ecc_volatile_uncorrected": 1},
        expect=GPU_DOWN,
        reasons={f"{GPU}/ecc": "EccUncorrectable", f"{GPU}/xid": "XidGpuReset95"},
        metric="trt_health_gpu_fatal_latches{} >= 1",
        recovery="sticky",
        evidence="scenario `reset` changed",
    ),
    Row(
        id="ecc-contained-xid94",
        fault="uncorrectable ECC with Xid 94 (contained)",
        injection="`gpus: [{xid: [94], ecc_volatile_uncorrected: 1}]`",
        gpu={"xid": [94], "ecc_volatile_uncorrected": 1},
        keep={"ecc_volatile_uncorrected": 1},
        expect={},
        reasons={f"{GPU}/ecc": "EccContained", f"{GPU}/xid": "XidProcess94"},
        metric='trt_health_gpu_ecc_errors{counter="volatile",type="uncorrected"} == 1',
        recovery="sticky",
        evidence="scenario `reset` changed (warning until then; readiness never gated)",
    ),
    Row(
        id="ecc-corrected-rate",
        fault="corrected ECC rate over the threshold",
        injection="`gpus: [{ecc_volatile_corrected: 500}]`",
        gpu={"ecc_volatile_corrected": 500},
        keep={"ecc_volatile_corrected": 500},
        expect={},
        reasons={f"{GPU}/ecc": "EccCorrectedRate"},
        metric='trt_health_gpu_ecc_errors{counter="volatile",type="corrected"} == 500',
        recovery="sticky",
        evidence="scenario `reset` changed (rate window restarts)",
    ),
    Row(
        id="remap-pending",
        fault="row remap pending",
        injection="`gpus: [{remap_pending: true}]`",
        gpu={"remap_pending": True},
        expect={},
        reasons={f"{GPU}/remap": "RemapPending"},
        metric="trt_health_gpu_remap_pending{} == 1",
    ),
    Row(
        id="remap-failure",
        fault="row remap failure",
        injection="`gpus: [{remap_failure: true}]`",
        gpu={"remap_failure": True},
        expect=GPU_DOWN,
        reasons={f"{GPU}/remap": "RemapFailure"},
        metric="trt_health_gpu_remap_failure{} == 1",
        recovery="sticky",
        evidence="remap_failure cleared, then scenario `reset` changed",
    ),
    Row(
        id="recovery-gpu-reset",
        fault="recovery action gpu_reset",
        injection="`gpus: [{recovery_action: gpu_reset}]`",
        gpu={"recovery_action": "gpu_reset"},
        expect=GPU_DOWN,
        reasons={f"{GPU}/recovery_action": "RecoveryActionReset"},
        metric="trt_health_gpu_recovery_action{} == 1",
        evidence="recovery action back to `none` (itself evidence of the reset)",
    ),
    Row(
        id="recovery-node-reboot",
        fault="recovery action node_reboot",
        injection="`gpus: [{recovery_action: node_reboot}]`",
        gpu={"recovery_action": "node_reboot"},
        expect=GPU_DOWN,
        reasons={f"{GPU}/recovery_action": "RecoveryActionReboot"},
        metric="trt_health_gpu_recovery_action{} == 2",
        evidence="recovery action back to `none`",
    ),
    Row(
        id="recovery-drain-p2p",
        fault="recovery action drain_p2p (single-GPU model)",
        injection="`gpus: [{recovery_action: drain_p2p}]`",
        gpu={"recovery_action": "drain_p2p"},
        expect={},
        reasons={f"{GPU}/recovery_action": "RecoveryActionDrainP2P"},
        metric="trt_health_gpu_recovery_action{} == 3",
    ),
    Row(
        id="gpu-lost",
        fault="GPU lost",
        injection="`gpus: [{lost: true}]`",
        gpu={"lost": True},
        expect=GPU_DOWN,
        reasons={f"{GPU}/lost": "GpuLost"},
        metric='trt_health_condition_ok{condition="gpu/GPU-sim-0/lost",severity="fatal"} == 0',
        recovery="sticky",
        evidence="scenario `reset` changed",
    ),
    Row(
        id="gpu-reset-required",
        fault="GPU reset required",
        injection="`gpus: [{reset_required: true}]`",
        gpu={"reset_required": True},
        expect=GPU_DOWN,
        reasons={f"{GPU}/lost": "GpuResetRequired"},
        metric='trt_health_condition_gating{condition="gpu/GPU-sim-0/lost"} == 1',
    ),
    Row(
        id="nvml-unavailable",
        fault="NVML unavailable (driver not loaded)",
        injection="`nvml: {unavailable: DriverNotLoaded}`",
        scenario={"nvml": {"unavailable": "DriverNotLoaded"}},
        expect={"readiness": N, "gpu": N},
        reasons={"nvml": "DriverNotLoaded"},
        metric="trt_health_nvml_up{} == 0",
    ),
    Row(
        id="nvml-hang",
        fault="NVML hanging (every call blocks)",
        injection="`nvml: {hang: true}`",
        scenario={"nvml": {"hang": True}},
        expect={"readiness": N, "gpu": N},
        reasons={"nvml": "NvmlHung"},
        metric="trt_health_nvml_calls_hung_total{} += 1",
        detect_s=4.0,
    ),
    Row(
        id="nvml-hang-one-gpu",
        fault="NVML hanging on one GPU",
        injection="`gpus: [{nvml_hang: true}]`",
        gpu={"nvml_hang": True},
        expect={"readiness": N, "gpu": N},
        reasons={"nvml": "NvmlHung"},
        metric="trt_health_nvml_up{} == 0",
        detect_s=4.0,
    ),
    Row(
        id="thermal-slowdown",
        fault="temperature at the slowdown threshold",
        injection="`gpus: [{temperature_c: 88}]`",
        gpu={"temperature_c": 88},
        expect={},
        reasons={f"{GPU}/thermal": "ThermalSlowdown"},
        metric="trt_health_gpu_temperature_celsius{} == 88",
    ),
    Row(
        id="thermal-shutdown",
        fault="temperature at the shutdown threshold",
        injection="`gpus: [{temperature_c: 95}]`",
        gpu={"temperature_c": 95},
        expect=GPU_DOWN,
        reasons={f"{GPU}/thermal": "ThermalShutdown"},
        metric="trt_health_gpu_temperature_celsius{} == 95",
    ),
    Row(
        id="exclusive-compute-mode",
        fault="compute mode EXCLUSIVE_PROCESS",
        injection="`gpus: [{compute_mode: exclusive_process}]`",
        gpu={"compute_mode": "exclusive_process"},
        expect={},
        reasons={f"{GPU}/compute_mode": "ExclusiveProcess", "canary": "ExclusiveProcessMode"},
        metric="trt_health_gpu_compute_mode{} == 3",
    ),
    Row(
        id="canary-crash",
        fault="canary worker crashes (SIGSEGV)",
        injection="`canary: {mode: crash}`",
        scenario={"canary": {"mode": "crash"}},
        expect={"readiness": N, "canary": N},
        reasons={"canary": "WorkerCrashed"},
        metric='trt_health_canary_worker_restarts_total{cause="SIGSEGV"} += 1',
    ),
    Row(
        id="canary-hang",
        fault="canary worker hangs",
        injection="`canary: {mode: hang}`",
        scenario={"canary": {"mode": "hang"}},
        expect={"readiness": N, "canary": N},
        reasons={"canary": "CanaryTimeout"},
        metric='trt_health_canary_worker_restarts_total{cause="CanaryTimeout"} += 1',
        detect_s=4.0,
        recover_s=10.0,
    ),
    Row(
        id="canary-worker-killed",
        fault="canary worker killed from outside (SIGKILL, e.g. the OOM killer)",
        injection="SIGKILL to the worker (the serving process's child, found in /proc)",
        action="worker_kill",
        expect={"readiness": N, "canary": N},
        reasons={"canary": "WorkerCrashed"},
        metric='trt_health_canary_worker_restarts_total{cause="SIGKILL"} += 1',
    ),
    Row(
        id="canary-wrong",
        fault="canary output wrong",
        injection="`canary: {mode: wrong}`",
        scenario={"canary": {"mode": "wrong"}},
        expect={"readiness": N, "canary": N},
        reasons={"canary": "CanaryMismatch"},
        metric='trt_health_canary_results_total{outcome="mismatch"} += 1',
        recovery="sticky",
        evidence="GPU reset generation changed (scenario `reset`), then 3 matching canaries",
    ),
    Row(
        id="canary-slow",
        fault="canary over its latency budget",
        injection="`canary: {mode: slow, delay_ms: 200}`",
        scenario={"canary": {"mode": "slow", "delay_ms": 200}},
        expect={},
        reasons={"canary/latency": "CanaryLatencyOverBudget"},
        metric='trt_health_condition_ok{condition="canary/latency",severity="warning"} == 0',
    ),
    Row(
        id="engine-missing",
        fault="engine file deleted",
        injection="delete `model.plan`",
        action="engine_missing",
        expect={f"engine/{ENGINE}": N},
        reasons={f"engine/{ENGINE}/file": "EngineMissing"},
        metric=f'trt_health_engine_verified{{engine="{ENGINE}"}} == 0',
        evidence="file restored",
    ),
    Row(
        id="engine-corrupt",
        fault="engine file corrupt (same size, other bytes)",
        injection="atomic rename of a corrupted copy over `model.plan`",
        action="engine_corrupt",
        expect={f"engine/{ENGINE}": N},
        reasons={f"engine/{ENGINE}/checksum": "EngineChecksumMismatch"},
        metric=f'trt_health_engine_changes_total{{engine="{ENGINE}"}} += 1',
    ),
    Row(
        id="engine-replaced",
        fault="engine replaced by another valid engine",
        injection="atomic rename of a new plan + its manifest",
        action="engine_replaced",
        expect={},
        reasons={f"engine/{ENGINE}/change": "EngineReplaced"},
        metric=f'trt_health_engine_changes_total{{engine="{ENGINE}"}} += 1',
    ),
    Row(
        id="engine-wrong-version",
        fault="engine built by another TensorRT version",
        injection="plan header 10.12.0.1 (manifest agrees), runtime 10.13.0.35",
        action="engine_wrong_version",
        expect={f"engine/{ENGINE}": N},
        reasons={f"engine/{ENGINE}/version": "EngineVersionMismatch"},
        metric=f'trt_health_engine_verified{{engine="{ENGINE}"}} == 0',
    ),
    Row(
        id="workload-failing",
        fault="workload endpoint answers 503",
        injection="the test's HTTP server returns 503",
        action="workload_failing",
        expect={"readiness": N, "workload-liveness": N},
        reasons={"workload": "WorkloadNotReady", "workload/liveness": "WorkloadNotReady"},
        metric="trt_health_workload_consecutive_failures{} >= 3",
    ),
    Row(
        id="workload-slow",
        fault="workload endpoint slower than the probe timeout",
        injection="the test's HTTP server sleeps 1 s (timeout 0.3 s)",
        action="workload_slow",
        expect={"readiness": N, "workload-liveness": N},
        reasons={"workload": "ProbeTimeout"},
        metric='trt_health_workload_probes_total{outcome="ProbeTimeout"} += 1',
        detect_s=5.0,
    ),
    # -- own processes ---------------------------------------------------------------------
    Row(
        id="drain-p2p-multi-gpu",
        fault="recovery action drain_p2p, `gpu.multi_gpu_model: true`",
        injection="`gpus: [{recovery_action: drain_p2p}]`",
        group="multi_gpu",
        gpu={"recovery_action": "drain_p2p"},
        expect=GPU_DOWN,
        reasons={f"{GPU}/recovery_action": "RecoveryActionDrainP2P"},
        metric="trt_health_gpu_recovery_action{} == 3",
    ),
    Row(
        id="xid-74-multi-gpu",
        fault="Xid 74 (NVLink), `gpu.multi_gpu_model: true`",
        injection="`gpus: [{xid: [74]}]`",
        group="multi_gpu",
        gpu={"xid": [74]},
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidNvlink74"},
        metric='trt_health_gpu_xid_events_total{code="74",class="nvlink"} += 1',
        recovery="sticky",
        evidence="scenario `reset` changed",
    ),
    Row(
        id="config-reload-invalid",
        fault="config file changed to an invalid one",
        injection="`policy: {failure_threshold: 0}` written over the config file",
        group="reload",
        action="config_invalid",
        expect={},
        reasons={},
        metric='trt_health_config_reloads_total{result="rejected"} += 1',
        evidence='a valid file is applied (`result="applied"`)',
    ),
    Row(
        id="config-reload-during-fatal",
        fault="valid config reload (components restart) during Xid 79",
        injection="Xid 79, then `gpu.poll_interval` changed in the config file",
        group="reload",
        action="config_reload_fatal",
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79"},
        metric='trt_health_config_reloads_total{result="applied"} += 1',
        recovery="sticky",
        evidence="scenario `reset` changed",
    ),
    Row(
        id="restart-mid-fatal",
        fault="sidecar restarted (SIGTERM) during Xid 79",
        injection="Xid 79, `kill -TERM`, restart on the same `--state-dir`",
        group="restart",
        action="restart_mid_fatal",
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79"},
        metric="trt_health_gpu_fatal_latches{} == 1",
        recovery="sticky",
        evidence="scenario `reset` changed",
    ),
    Row(
        id="scenario-alias-bomb",
        fault="YAML alias bomb in the scenario (421 bytes under `canary:`), then Xid 79",
        injection="the bomb is written and refused (one bounded log line), then `gpus: [{xid: [79]}]`",
        action="scenario_bomb",
        gpu={"xid": [79]},
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79"},
        metric='trt_health_gpu_xid_events_total{code="79",class="node_fatal"} += 1',
        recovery="sticky",
        evidence="scenario `reset` changed (GPU reset observed)",
    ),
    Row(
        id="scenario-deep-nesting",
        fault="scenario nested 20,000 levels deep, then Xid 79",
        injection="the document is written and refused (one bounded log line), then `gpus: [{xid: [79]}]`",
        action="scenario_deep",
        gpu={"xid": [79]},
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79"},
        metric='trt_health_gpu_xid_events_total{code="79",class="node_fatal"} += 1',
        recovery="sticky",
        evidence="scenario `reset` changed (GPU reset observed)",
    ),
    Row(
        id="restart-xid-with-reset",
        fault="Xid 79 arrives together with a GPU reset; sidecar killed (SIGKILL) at once",
        injection="`gpus: [{xid: [79], reset: 1}]` over `reset: 0`, `kill -9` as soon as readiness"
        " is NOT_SERVING, restart with `gpus: [{xid: [], reset: 1}]`",
        group="restart",
        action="restart_xid_with_reset",
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79"},
        metric="trt_health_gpu_fatal_latches{} == 1",
        recovery="sticky",
        evidence="a later scenario `reset` change (the reset that came with the Xid cannot be"
        " ordered before it)",
    ),
    Row(
        id="latch-store-corrupt",
        fault="latch state file corrupt at start (not UTF-8; also truncated, `{}`, unknown `version`)",
        injection="`kill -TERM`, 300 bytes starting `\\xff` written over"
        " `<state-dir>/gpu-latches.json`, restart",
        group="restart",
        action="latch_store_corrupt",
        expect={"readiness": N, "gpu": N},
        reasons={"gpu/state": "LatchStoreCorrupt"},
        metric='trt_health_condition_ok{condition="gpu/state"} == 0',
        recovery="sticky",
        evidence="the operator removes the kept-aside `gpu-latches.json.corrupt-*` file",
    ),
    Row(
        id="latch-store-unwritable",
        fault="latch state dir unwritable (full disk, read-only, gone) when Xid 79 must be persisted",
        injection="`<state-dir>` replaced by a regular file, then `gpus: [{xid: [79]}]`",
        group="restart",
        action="latch_store_unwritable",
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79", "gpu/state": "LatchStoreUnwritable"},
        metric='trt_health_condition_ok{condition="gpu/state"} == 0',
        recovery="sticky",
        evidence="a write succeeds again (`gpu/state`), then scenario `reset` changed (`xid`)",
    ),
    Row(
        id="config-reload-failed-rebuild",
        fault="config reload while the latch file is corrupt (the GPU component could not be"
        " rebuilt before the latch store failed closed), then Xid 79",
        injection="300 random bytes over `gpu-latches.json`, `gpu.poll_interval` changed, then Xid 79",
        group="reload",
        action="config_reload_failed_rebuild",
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79"},
        metric='trt_health_gpu_xid_events_total{code="79",class="node_fatal"} += 1',
        recovery="sticky",
        evidence="scenario `reset` changed, and any kept-aside latch file removed",
    ),
    Row(
        id="http-slowloris",
        fault="HTTP slowloris: 600 connections that never finish their header (cap 256)",
        injection="600 raw connections to the HTTP port, each sends a partial header and stays open",
        action="http_slowloris",
        expect={},
        reasons={},
        metric='trt_health_http_connections_closed_total{reason="evicted"} += 300',
    ),
    Row(
        id="scenario-huge",
        fault="a 50 MB scenario file (it blocked the event loop 44 s, hiding a dead canary worker),"
        " then Xid 79",
        injection="50 MB written over the scenario file: refused before parsing (one bounded log line), "
        "then `gpus: [{xid: [79]}]`; liveness stays SERVING throughout",
        action="scenario_huge",
        gpu={"xid": [79]},
        expect=GPU_DOWN,
        reasons={f"{GPU}/xid": "XidFatal79"},
        metric='trt_health_gpu_xid_events_total{code="79",class="node_fatal"} += 1',
        recovery="sticky",
        evidence="scenario `reset` changed (GPU reset observed)",
    ),
    Row(
        id="sighup-storm",
        fault="a config change followed by a storm of 20 SIGHUPs (concurrent reloads ran two canary workers)",
        injection="`canary.interval` changed in the config file, then 20 x `kill -HUP`",
        group="reload",
        action="sighup_storm",
        expect={},
        reasons={},
        metric='trt_health_config_reloads_total{result="rejected"} == 0',
        evidence="one reload applies the change, the rest coalesce into one that finds nothing new; "
        "one canary worker",
    ),
    Row(
        id="unix-socket-regular-file",
        fault="`--unix-socket PATH` where PATH is a regular file with data (it used to be deleted)",
        injection="`serve --unix-socket FILE` with FILE holding 4 KiB of data",
        group="startup",
        action="unix_socket_file",
        expect={s: N for s in ALL_SERVING},
        reasons={},
        metric="exit status == 3",
        evidence="the file is left as it was; `serve` exits 3 naming it (never starts serving)",
    ),
    Row(
        id="actions-rollback-bad-version",
        fault="a new engine version fails verification (rollback on)",
        injection="manifest `version: 2` whose `sha256` is not the plan's; MLServer serves versions 0, 1, 2",
        group="actions",
        action="engine_bad_new_version",
        expect={f"engine/{ENGINE}": N, "primary": S},
        reasons={
            f"engine/{ENGINE}/checksum": "EngineChecksumMismatch",
            f"actions/{ENGINE}/rollback": "RolledBack",
        },
        metric='trt_health_actions_total{action="rollback",outcome="ok"} += 1',
        evidence="the server lists only version 1 and an inference answers from it; the engine "
        "restored: the pin is released (every version listed again)",
        served="1",
        detect_s=6.0,
    ),
    Row(
        id="actions-gpu-fault-no-rollback",
        fault="a GPU fault while the new engine version fails (rollback on)",
        injection="`gpus: [{reset_required: true}]` + the bad version 2",
        group="actions",
        action="gpu_fault_bad_engine",
        gpu={"reset_required": True},
        expect={**GPU_DOWN, f"engine/{ENGINE}": N, "primary": S},
        reasons={
            f"{GPU}/lost": "GpuResetRequired",
            f"engine/{ENGINE}/checksum": "EngineChecksumMismatch",
            f"actions/{ENGINE}/rollback": "GpuFaultNoRollback",
        },
        metric='trt_health_rolled_back{engine="prod"} == 0',
        evidence="no call is made: the server still lists every version",
        served="0,1,2",
        detect_s=6.0,
    ),
    Row(
        id="actions-degrade-memory",
        fault="GPU memory headroom under `degrade.min_free_mib` (degrade on, fallback verified by "
        "its own canary)",
        injection="`gpus: [{memory_free_mib: 100}]`, `enter_after: 0.3s`",
        group="actions",
        gpu={"memory_free_mib": 100},
        expect={"primary": N},
        reasons={f"degraded/{ENGINE}": "ServingFallback", FALLBACK_CANARY: "VerifiedAndReleased"},
        metric='trt_health_degraded{engine="prod"} == 1',
        evidence="the server lists only the fallback (version 0); back to every version after "
        "`restore_after: 1s` without pressure",
        served="0",
        detect_s=6.0,
        recover_s=10.0,
    ),
    Row(
        id="actions-degrade-thermal",
        fault="GPU at its slowdown temperature (thermal throttling; degrade on, fallback verified "
        "by its own canary)",
        injection="`gpus: [{temperature_c: 88}]`, `enter_after: 0.3s`",
        group="actions",
        gpu={"temperature_c": 88},
        expect={"primary": N},
        reasons={
            f"{GPU}/thermal": "ThermalSlowdown",
            f"degraded/{ENGINE}": "ServingFallback",
            FALLBACK_CANARY: "VerifiedAndReleased",
        },
        metric='trt_health_degraded{engine="prod"} == 1',
        evidence="the server lists only the fallback (version 0); back after `restore_after: 1s`",
        served="0",
        detect_s=6.0,
        recover_s=10.0,
    ),
    Row(
        id="actions-flapping-bounded",
        fault="version 2 keeps changing, verifying and failing (a flapping pair)",
        injection="bad, fixed, bad, fixed, bad version 2 (a new sha256 each time); `max_rollbacks: 2`",
        group="actions_flap",
        action="engine_flapping",
        expect={f"engine/{ENGINE}": N, "primary": S},
        reasons={
            f"engine/{ENGINE}/checksum": "EngineChecksumMismatch",
            f"actions/{ENGINE}/rollback": "RollbackFlapping",
        },
        metric='trt_health_actions_total{action="rollback",outcome="ok"} == 2',
        evidence="the third rollback is not made: the server lists every version",
        served="0,1,2",
        detect_s=20.0,
    ),
    Row(
        id="actions-dry-run",
        fault="a new engine version fails verification (rollback on, `dry_run: true`)",
        injection="the bad version 2, as in `actions-rollback-bad-version`",
        group="actions_dry",
        action="engine_bad_new_version",
        expect={f"engine/{ENGINE}": N, "primary": S},
        reasons={
            f"engine/{ENGINE}/checksum": "EngineChecksumMismatch",
            f"actions/{ENGINE}/rollback": "RollbackPending",
        },
        metric='trt_health_actions_total{action="rollback",outcome="dry_run"} += 1',
        evidence="reported (log, metric, Event, condition labels) but no call: every version listed",
        served="0,1,2",
        detect_s=6.0,
    ),
)


def rows(group: str | None = None) -> list[Row]:
    return [r for r in ROWS if group is None or r.group == group]


def _services_cell(row: Row) -> str:
    down = [s for s, v in row.services().items() if v == N]
    return ", ".join(f"`{s}`" for s in down) + " NOT_SERVING" if down else "all SERVING"


def markdown() -> str:
    """The docs/fault-matrix.md text."""
    lines = [
        "# Fault matrix",
        "",
        "<!-- GENERATED by `python -m tests.integration.fault_matrix_table --markdown`"
        " from tests/integration/fault_matrix_table.py; do not edit by hand."
        " tests/integration/test_fault_matrix.py fails when this file is stale. -->",
        "",
        "Every row is a test in `tests/integration/test_fault_matrix.py` (`make test` runs it in"
        " CI): the fault is injected into a running `serve --simulate` process (simulated GPU,"
        " real canary worker process, real engine files, a real HTTP endpoint for the workload"
        " probe), and the suite asserts the service statuses (gRPC health `Check`), the reasons"
        " (diagnostics RPC `GetConditions`), the metric (`/metrics`), that probes on a fresh"
        " connection with a 1 s budget keep answering during the fault, recovery (or stickiness"
        " and then the evidence that clears it), and that the serving process never dies.",
        "",
        f"Services not listed are SERVING (`{'`, `'.join(ALL_SERVING)}`). `gpu/<uuid>` is"
        f" `{GPU}`. Groups: `main` shares one sidecar process (the scenario is reset to"
        " healthy between rows); `multi_gpu` runs with `gpu.multi_gpu_model: true`; `reload`"
        " and `restart` get their own processes; `actions`, `actions_flap` and `actions_dry` run"
        " with a real MLServer (versions 0, 1, 2 of the model) and the `actions` section"
        " (docs/actions.md), and also assert what the server lists and which version answers."
        f" Their fallback `{FALLBACK}` (version 0) is an ONNX engine in"
        " `canary.production_engines` with `release_after_verify: true`: the degrade rows use it"
        f" only because its own canary passed (`{FALLBACK_CANARY}`, `require_fallback_canary:"
        " true`).",
        "",
        "| # | fault | injection | services | reasons | metric | recovery | group |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(ROWS, 1):
        reasons = "<br>".join(f"`{c}`: `{r}`" if r else f"`{c}`: OK" for c, r in row.reasons.items())
        if not reasons:
            reasons = "log `config reload rejected, old config stays` naming the field"
        if row.recovery == "sticky":
            rec = f"**sticky** until {row.evidence}"
        else:
            rec = "clears when the fault is removed" + (f" ({row.evidence})" if row.evidence else "")
        if row.xfail:
            rec += f" — **known bug (xfail)**: {row.xfail}"
        metric = row.metric.replace("{}", "").replace("|", "\\|")
        lines.append(
            f"| {i} | {row.fault} | {row.injection} | {_services_cell(row)} | {reasons} |"
            f" `{metric}` | {rec} | {row.group} |"
        )
    lines += [
        "",
        "Metric notation: `+= 1` means the counter increased by at least 1 during the row;",
        " `== v` / `>= v` is the value while the fault holds.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--markdown", action="store_true", help="print docs/fault-matrix.md")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
        return 0
    for row in ROWS:
        print(f"{row.group:10} {row.id}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
