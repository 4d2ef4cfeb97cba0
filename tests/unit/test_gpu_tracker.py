"""The GPU fault rules through the pure tracker: rows of (samples and events at given times) ->
(condition, severity, reason) and the latch decisions, with no backend, file or clock.

A row is a list of steps; each step is a sample (``S``), an Xid event (``X``) or a failed sample
(``E``) at monotonic time ``t`` (wall time ``1000 + t``). The latch changes each fold decides are
applied to a plain :class:`GpuLatchState` with the same functions the store uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from sidecar.core.values import CheckResult, Severity
from sidecar.gpu.backend import (
    CLOCKS_HW_SLOWDOWN,
    MIG_ID_ANY,
    EccCounters,
    EventType,
    GpuEvent,
    GpuInfo,
    GpuLostError,
    GpuSample,
    MemoryInfo,
    MigInstance,
    RecoveryAction,
    RemappedRows,
    ResetRequiredError,
)
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.fold import CANARY_CHECK, POLL_CHECK, Fold
from sidecar.gpu.latchstate import GpuLatchState, Latch, Observed, apply_all
from sidecar.gpu.tracker import GpuTracker
from sidecar.gpu.xid import XidClass

U = "GPU-t"
INFO = GpuInfo(0, U, name="T")
WALL0 = 1000.0
OK = None  # expected: the condition passes
INFO_S, WARNING, CRITICAL, FATAL = Severity.INFO, Severity.WARNING, Severity.CRITICAL, Severity.FATAL


@dataclass(frozen=True)
class S:
    """A sample at time ``t`` with these GpuSample fields (``unc``/``cor``: volatile ECC)."""

    t: float
    unc: int | None = None
    cor: int = 0
    kw: dict[str, Any] = field(default_factory=dict)

    def sample(self, info: GpuInfo) -> GpuSample:
        ecc = (
            EccCounters(volatile_corrected=self.cor, volatile_uncorrected=self.unc)
            if self.unc is not None
            else None
        )
        return GpuSample(info=info, **({"ecc": ecc} if ecc else {}), **self.kw)


@dataclass(frozen=True)
class X:
    """An Xid event received at time ``t``."""

    t: float
    code: int
    gi: int = MIG_ID_ANY


@dataclass(frozen=True)
class E:
    """A sample that failed at time ``t``: the GPU lost, or needing a reset."""

    t: float
    lost: bool = True


Step = S | X | E


class Rig:
    """A tracker, one GPU and its latch state (what the store would hold)."""

    def __init__(
        self, cfg: GpuConfig | None = None, *, info: GpuInfo = INFO, lose_vanished: bool = False
    ) -> None:
        self.cfg = cfg or GpuConfig()
        self.tracker = GpuTracker(self.cfg, lose_vanished=lose_vanished)
        self.info = info
        self.tracker.enumerate([info])
        self.latches: dict[str, GpuLatchState] = {}
        self.folds: list[Fold] = []

    def apply(self, fold: Fold) -> Fold:
        if fold.changes:
            self.latches[fold.uuid] = apply_all(
                self.latches.get(fold.uuid, GpuLatchState()), fold.changes
            ).state
        self.folds.append(fold)
        return fold

    def step(self, step: Step) -> Fold:
        uuid = self.info.uuid
        wall = WALL0 + step.t
        view = self.latches.get(uuid)
        if isinstance(step, S):
            return self.apply(self.tracker.fold(step.sample(self.info), taken=wall, now=step.t, latches=view))
        if isinstance(step, X):
            ev = GpuEvent(uuid, int(EventType.XID_CRITICAL), step.code, step.gi, MIG_ID_ANY, wall_time=wall)
            return self.apply(self.tracker.event(ev, now=step.t, wall=wall, latches=view))
        exc = GpuLostError("gone") if step.lost else ResetRequiredError("reset me")
        return self.apply(self.tracker.fold_error(self.info, exc, taken=wall, now=step.t, latches=view))

    def run(self, steps: list[Step]) -> Fold:
        fold = Fold(self.info.uuid)
        for step in steps:
            fold = self.step(step)
        return fold

    def held(self) -> list[str]:
        return sorted(x.reason for x in self.latches.get(self.info.uuid, GpuLatchState()).latches)


def result(fold: Fold, signal: str) -> CheckResult:
    return next(r for r in fold.results if r.name == f"gpu/{U}/{signal}")


def outcome(r: CheckResult) -> tuple[Severity | None, str]:
    return (None, "") if r.ok and r.reason in ("", "Unmonitored") else (r.severity, r.reason)


# (row, config overrides, steps, signal, expected severity (None: passes), expected reason, latches held)
RULES: list[tuple[str, dict[str, Any], list[Step], str, Severity | None, str, list[str]]] = [
    # --- ECC: uncorrectable increases are classified by the Xid seen with them ---------------
    ("ecc/clean", {}, [S(0, unc=0), S(5, unc=0)], "ecc", OK, "", []),
    (
        "ecc/rise-without-xid-latches",
        {},
        [S(0, unc=0), S(5, unc=1)],
        "ecc",
        FATAL,
        "EccUncorrectable",
        ["EccUncorrectable"],
    ),
    (
        "ecc/first-sample-nonzero-latches",
        {},
        [S(0, unc=3)],
        "ecc",
        FATAL,
        "EccUncorrectable",
        ["EccUncorrectable"],
    ),
    (
        "ecc/rise-with-xid94-is-contained",
        {},
        [S(0, unc=0), X(4, 94), S(5, unc=1)],
        "ecc",
        WARNING,
        "EccContained",
        [],
    ),
    (
        "ecc/xid94-outside-window-does-not-contain",
        {},
        [S(0, unc=0), X(0, 94), S(5.1, unc=1)],
        "ecc",
        FATAL,
        "EccUncorrectable",
        ["EccUncorrectable"],
    ),
    (
        "ecc/xid94-window-is-config",
        {"ecc_xid_window_s": 10.0},
        [S(0, unc=0), X(0, 94), S(9, unc=1)],
        "ecc",
        WARNING,
        "EccContained",
        [],
    ),
    (
        "ecc/xid94-and-48-is-uncontained",
        {},
        [S(0, unc=0), X(4, 94), X(4, 48), S(5, unc=1)],
        "ecc",
        FATAL,
        "EccUncorrectable",
        ["EccUncorrectable", "XidGpuReset48"],
    ),
    (
        "ecc/xid94-after-the-increase-contains-it",
        {},
        [S(0, unc=0), S(5, unc=1), X(6, 94)],
        "ecc",
        WARNING,
        "EccContained",
        [],
    ),
    (
        "ecc/xid94-long-after-keeps-the-latch",
        {},
        [S(0, unc=0), S(5, unc=1), X(11, 94)],
        "ecc",
        FATAL,
        "EccUncorrectable",
        ["EccUncorrectable"],
    ),
    (
        "ecc/contained-clears-at-zero",
        {},
        [S(0, unc=0), X(4, 94), S(5, unc=1), S(6, unc=0)],
        "ecc",
        OK,
        "",
        [],
    ),
    (
        "ecc/corrected-rate",
        {"ecc_corrected_warn": 10},
        [S(0, unc=0, cor=0), S(60, unc=0, cor=10)],
        "ecc",
        WARNING,
        "EccCorrectedRate",
        [],
    ),
    (
        "ecc/corrected-below-rate",
        {"ecc_corrected_warn": 10},
        [S(0, unc=0, cor=0), S(60, unc=0, cor=9)],
        "ecc",
        OK,
        "",
        [],
    ),
    (
        "ecc/corrected-rate-window-slides",
        {"ecc_corrected_warn": 10, "ecc_corrected_window_s": 100.0},
        [S(0, unc=0, cor=0), S(50, unc=0, cor=5), S(101, unc=0, cor=14)],
        "ecc",
        OK,
        "",
        [],
    ),
    # --- remap: a failure latches (RMA) and stays after the reading clears ---------------------
    (
        "remap/failure-latches",
        {},
        [S(0, kw={"remap": RemappedRows(failure=True)}), S(5, kw={"remap": RemappedRows()})],
        "remap",
        FATAL,
        "RemapFailure",
        ["RemapFailure"],
    ),
    (
        "remap/pending-is-a-warning",
        {},
        [S(0, kw={"remap": RemappedRows(pending=True)})],
        "remap",
        WARNING,
        "RemapPending",
        [],
    ),
    # --- thermal: hardware slowdown must be sustained -------------------------------------------
    (
        "thermal/hw-slowdown-brief",
        {"thermal_sustain_s": 30.0},
        [
            S(0, kw={"temperature_c": 50, "clock_event_reasons": CLOCKS_HW_SLOWDOWN}),
            S(29, kw={"temperature_c": 50, "clock_event_reasons": CLOCKS_HW_SLOWDOWN}),
        ],
        "thermal",
        OK,
        "",
        [],
    ),
    (
        "thermal/hw-slowdown-sustained",
        {"thermal_sustain_s": 30.0},
        [
            S(0, kw={"temperature_c": 50, "clock_event_reasons": CLOCKS_HW_SLOWDOWN}),
            S(30, kw={"temperature_c": 50, "clock_event_reasons": CLOCKS_HW_SLOWDOWN}),
        ],
        "thermal",
        WARNING,
        "ClocksHwSlowdown",
        [],
    ),
    (
        "thermal/hw-slowdown-interrupted-restarts",
        {"thermal_sustain_s": 30.0},
        [
            S(0, kw={"temperature_c": 50, "clock_event_reasons": CLOCKS_HW_SLOWDOWN}),
            S(20, kw={"temperature_c": 50, "clock_event_reasons": 0}),
            S(40, kw={"temperature_c": 50, "clock_event_reasons": CLOCKS_HW_SLOWDOWN}),
            S(60, kw={"temperature_c": 50, "clock_event_reasons": CLOCKS_HW_SLOWDOWN}),
        ],
        "thermal",
        OK,
        "",
        [],
    ),
    (
        "thermal/driver-shutdown-threshold",
        {},
        [S(0, kw={"temperature_c": 95, "shutdown_threshold_c": 95})],
        "thermal",
        FATAL,
        "ThermalShutdown",
        [],
    ),
    (
        "thermal/config-threshold-wins",
        {"thermal_shutdown_c": 99.0},
        [S(0, kw={"temperature_c": 95, "shutdown_threshold_c": 95, "slowdown_threshold_c": 90})],
        "thermal",
        WARNING,
        "ThermalSlowdown",
        [],
    ),
    # --- PCIe replays: a rate within the window -------------------------------------------------
    (
        "pcie/rate",
        {},
        [S(0, kw={"pcie_replay_count": 100}), S(30, kw={"pcie_replay_count": 108})],
        "pcie",
        WARNING,
        "PcieReplayRate",
        [],
    ),
    (
        "pcie/outside-window",
        {},
        [S(0, kw={"pcie_replay_count": 100}), S(61, kw={"pcie_replay_count": 108})],
        "pcie",
        OK,
        "",
        [],
    ),
    # --- memory: the sidecar's needs, unless the GPU is exclusive to the server ---------------
    (
        "memory/exclusive-needs-nothing",
        {},
        [S(0, kw={"memory": MemoryInfo(80, 80, 0), "compute_mode": 3})],
        "memory",
        OK,
        "",
        [],
    ),
    # --- Xids: fatal ones latch; others warn for the report window ------------------------------
    ("xid/fatal-latches", {}, [S(0), X(1, 79), S(5)], "xid", FATAL, "XidFatal79", ["XidFatal79"]),
    ("xid/gpu-fatal-latches", {}, [S(0), X(1, 48)], "xid", FATAL, "XidGpuReset48", ["XidGpuReset48"]),
    ("xid/process-warns-in-window", {}, [S(0), X(1, 31), S(301)], "xid", WARNING, "XidProcess31", []),
    ("xid/process-expires", {}, [S(0), X(1, 31), S(301.1)], "xid", OK, "", []),
    (
        "xid/report-window-is-config",
        {"xid_report_window_s": 10.0},
        [S(0), X(1, 31), S(11.5)],
        "xid",
        OK,
        "",
        [],
    ),
    ("xid/nvlink-single-gpu-warns", {}, [S(0), X(1, 74)], "xid", WARNING, "XidNvlink74", []),
    (
        "xid/nvlink-multi-gpu-latches",
        {"multi_gpu_model": True},
        [S(0), X(1, 74)],
        "xid",
        FATAL,
        "XidNvlink74",
        ["XidNvlink74"],
    ),
    (
        "xid/override-to-ignore",
        {"xid_overrides": {79: XidClass.IGNORE}},
        [S(0), X(1, 79), S(2)],
        "xid",
        OK,
        "",
        [],
    ),
    (
        "xid/override-to-fatal",
        {"xid_overrides": {31: XidClass.GPU_FATAL}},
        [S(0), X(1, 31)],
        "xid",
        FATAL,
        "XidGpuReset31",
        ["XidGpuReset31"],
    ),
    ("xid/unknown-warns", {}, [S(0), X(1, 999)], "xid", WARNING, "XidUnknown999", []),
    # --- resets: evidence clears the latches up to the baseline sample ---------------------------
    (
        "reset/counter-clears",
        {},
        [S(0, kw={"reset_count": 0}), X(1, 79), S(2, kw={"reset_count": 0}), S(3, kw={"reset_count": 1})],
        "xid",
        OK,
        "",
        [],
    ),
    (
        "reset/xid-after-baseline-stays",
        {},
        [S(0, kw={"reset_count": 0}), X(1, 79), S(3, kw={"reset_count": 1})],
        "xid",
        FATAL,
        "XidFatal79",
        ["XidFatal79"],
    ),
    (
        "reset/ecc-counter-went-back",
        {},
        [S(0, unc=0), S(5, unc=2), S(6, unc=2), S(10, unc=0)],
        "ecc",
        OK,
        "",
        [],
    ),
    (
        "reset/recovery-action-back-to-none",
        {},
        [
            S(0, kw={"recovery_action": RecoveryAction.NONE}),
            S(5, unc=None, kw={"recovery_action": 1}),
            S(6, kw={"remap": RemappedRows(failure=True), "recovery_action": 1}),
            S(10, kw={"recovery_action": RecoveryAction.NONE}),
        ],
        "remap",
        OK,
        "",
        [],
    ),
    (
        "reset/none-class-to-none-is-no-evidence",
        {},
        [
            S(0, kw={"remap": RemappedRows(failure=True), "recovery_action": 3}),
            S(10, kw={"remap": RemappedRows(), "recovery_action": RecoveryAction.NONE}),
        ],
        "remap",
        FATAL,
        "RemapFailure",
        ["RemapFailure"],
    ),
    # --- the device as a whole ------------------------------------------------------------------
    ("lost/latches", {}, [S(0), E(1, lost=True), S(2)], "lost", FATAL, "GpuLost", ["GpuLost"]),
    (
        "lost/reset-required-is-not-latched",
        {},
        [S(0), E(1, lost=False)],
        "lost",
        FATAL,
        "GpuResetRequired",
        [],
    ),
    ("lost/reset-required-clears-on-a-sample", {}, [S(0), E(1, lost=False), S(2)], "lost", OK, "", []),
]


@pytest.mark.parametrize(
    ("row", "cfg", "steps", "signal", "severity", "reason", "held"), RULES, ids=[r[0] for r in RULES]
)
def test_fault_rule(
    row: str,
    cfg: dict[str, Any],
    steps: list[Step],
    signal: str,
    severity: Severity | None,
    reason: str,
    held: list[str],
) -> None:
    rig = Rig(GpuConfig(**cfg))
    last = rig.run(steps)
    r = result(last, signal)
    assert outcome(r) == (severity, reason), f"{row}: {r.message}"
    assert rig.held() == held


def test_a_reset_counts_a_generation_and_forgets_recent_xids() -> None:
    rig = Rig()
    rig.run([S(0, kw={"reset_count": 0}), X(1, 31)])
    fold = rig.step(S(2, kw={"reset_count": 1}))
    assert fold.reset == "reset counter changed 0 -> 1"
    assert rig.tracker.reset_generation == 1
    assert outcome(result(fold, "xid")) == (None, "")  # the Xid 31 warning went with the reset
    assert [n.message for n in fold.notes] == ["GPU reset observed"]


def test_no_reset_evidence_from_a_gpu_the_store_does_not_know() -> None:
    """Evidence needs a baseline: the first sample of an unknown GPU is none."""
    rig = Rig()
    fold = rig.step(S(0, unc=0, kw={"reset_count": 5}))
    assert fold.reset is None and rig.tracker.reset_generation == 0


def test_a_known_contained_count_after_a_restart_stays_contained() -> None:
    """The store's baseline already holds 2 uncorrected and no ECC latch: the restarted tracker
    sees the same count, so it was contained (WARNING), not a new uncontained error."""
    rig = Rig()
    rig.latches[U] = GpuLatchState(observed=Observed(volatile_uncorrected=2, at=WALL0 - 10))
    fold = rig.step(S(0, unc=2))
    assert outcome(result(fold, "ecc")) == (WARNING, "EccContained") and rig.held() == []
    latched = Rig()
    latched.latches[U] = GpuLatchState(
        latches=(Latch("ecc", "EccUncorrectable", "rose", since=WALL0 - 20),),
        observed=Observed(volatile_uncorrected=2, at=WALL0 - 10),
    )
    fold = latched.step(S(0, unc=2))
    assert outcome(result(fold, "ecc")) == (FATAL, "EccUncorrectable")


@pytest.mark.parametrize(
    ("row", "event_type", "code", "triggers"),
    [
        ("double-bit-ecc", EventType.DOUBLE_BIT_ECC, 0, [POLL_CHECK, CANARY_CHECK]),
        ("recovery-action", EventType.GPU_RECOVERY_ACTION, 0, [POLL_CHECK]),
        ("single-bit-ecc", EventType.SINGLE_BIT_ECC, 0, []),
        ("xid-fatal", EventType.XID_CRITICAL, 79, [POLL_CHECK]),
        ("xid-unknown", EventType.XID_CRITICAL, 999, [CANARY_CHECK]),
        ("xid-contained-ecc", EventType.XID_CRITICAL, 94, [POLL_CHECK]),
        ("xid-uncontained-ecc", EventType.XID_CRITICAL, 95, [POLL_CHECK]),
        ("xid-recovery-action", EventType.XID_CRITICAL, 154, [POLL_CHECK]),
        ("xid-process", EventType.XID_CRITICAL, 31, []),
    ],
)
def test_event_triggers(row: str, event_type: EventType, code: int, triggers: list[str]) -> None:
    rig = Rig()
    ev = GpuEvent(U, int(event_type), code, wall_time=WALL0)
    assert rig.tracker.event(ev, now=0.0, wall=WALL0, latches=None).triggers == triggers


def test_an_uncorrectable_increase_runs_the_canary() -> None:
    rig = Rig()
    assert rig.run([S(0, unc=0), S(5, unc=1)]).triggers == [CANARY_CHECK]


def test_latches_are_dated_by_when_their_evidence_was_seen() -> None:
    """A sample's finding by when its calls started (``taken``); an Xid by when it was received."""
    rig = Rig()
    rig.run([S(0, unc=0), S(5, unc=1), X(7, 79)])
    since = {x.reason: x.since for x in rig.latches[U].latches}
    assert since == {"EccUncorrectable": WALL0 + 5, "XidFatal79": WALL0 + 7}


def test_an_xid_of_another_mig_instance_is_ignored() -> None:
    info = GpuInfo(0, U, mig_enabled=True, instances=(MigInstance("MIG-a", 1, 0),))
    rig = Rig(info=info)
    fold = rig.step(X(0, 79, gi=2))
    assert fold.xid_ignored == 79 and rig.held() == [] and fold.results == []
    fold = rig.step(X(1, 79, gi=1))
    assert fold.xid == (79, "node_fatal") and rig.held() == ["XidFatal79"]


def test_an_event_for_an_unmapped_handle_is_the_only_gpus() -> None:
    rig = Rig()
    assert rig.tracker.resolve("GPU-unknown") == U
    rig.tracker.enumerate([INFO, GpuInfo(1, "GPU-2")])
    assert rig.tracker.resolve("GPU-unknown") == "GPU-unknown"


@pytest.mark.parametrize(
    ("row", "lose_vanished", "latched", "retired", "results"),
    [
        ("simulated-leaves-clean", False, False, True, []),
        ("simulated-with-latch-stays", False, True, False, ["GpuNotEnumerated", "XidFatal79"]),
        ("real-vanish-is-lost", True, False, False, ["GpuLost", ""]),
    ],
)
def test_a_gpu_that_leaves_the_inventory(
    row: str, lose_vanished: bool, latched: bool, retired: bool, results: list[str]
) -> None:
    rig = Rig(lose_vanished=lose_vanished)
    rig.run([S(0), *([X(1, 79)] if latched else [])])
    folds = [
        rig.apply(f) for f in rig.tracker.absent(set(), enumerated=WALL0 + 2, now=2.0, latches=rig.latches)
    ]
    drops = [f.retire for f in folds if f.retire is not None and f.retire.drop_gpu]
    assert bool(drops) == retired
    assert [r.reason for f in folds for r in f.results] == results
    again = rig.tracker.absent(set(), enumerated=WALL0 + 3, now=3.0, latches=rig.latches)
    assert not any(f.notes for f in again) or retired  # reported (and logged) once


def test_a_vanished_gpu_holding_latches_retires_only_its_live_signals() -> None:
    rig = Rig()
    rig.run([S(0), X(1, 79)])
    [fold] = rig.tracker.absent(set(), enumerated=WALL0 + 2, now=2.0, latches=rig.latches)
    assert fold.retire is not None and not fold.retire.drop_gpu and fold.retire.services == ()
    assert f"gpu/{U}/thermal" in fold.retire.prefixes and f"gpu/{U}/xid" not in fold.retire.prefixes
    [later] = rig.tracker.absent(set(), enumerated=WALL0 + 3, now=3.0, latches=rig.latches)
    assert later.retire is None and later.notes == []


def test_state_view_answers_from_the_last_sample() -> None:
    rig = Rig(GpuConfig(busy_utilization_pct=90.0))
    rig.step(
        S(
            0,
            kw={
                "utilization_gpu_pct": 95,
                "compute_mode": 3,
                "memory": MemoryInfo(100 << 20, 60 << 20, 40 << 20),
            },
        )
    )
    t = rig.tracker
    assert t.busy() and t.exclusive_process() and t.free_memory_mib() == 40.0
    rig.step(S(1, kw={"utilization_gpu_pct": 10, "compute_mode": 0}))
    assert not t.busy() and not t.exclusive_process() and t.free_memory_mib() is None
