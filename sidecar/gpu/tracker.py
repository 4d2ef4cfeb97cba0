"""The GPU fault rules as a pure fold: samples, events and time in; results and latch decisions out.

:class:`GpuTracker` remembers what the rules need between samples (the last sample, recent Xids,
ECC / PCIe histories, how long the clocks have been slowed down) and turns each NVML sample, each
failed sample, each event and each enumeration into a :class:`Fold`: the condition results, the
latch changes the component then applies to the store (and persists), what to log, which checks to
trigger. No I/O, no clock, no lock: time is an argument (``now`` monotonic seconds, ``taken`` /
``wall`` wall-clock seconds) and the latches come in as a snapshot
(:class:`sidecar.gpu.latchstate.GpuLatchState`), so every rule is tested by rows of samples and
times (``tests/unit/test_gpu_tracker.py``). The caller serialises calls (the component's lock).

Fault policy (``../shared/reference/gpu-health-anchors.md`` (b)): the condition builders in
:mod:`sidecar.gpu.conditions`, :mod:`sidecar.gpu.env_conditions` and
:mod:`sidecar.gpu.xid_conditions`, assembled per sample by :mod:`sidecar.gpu.sample_conditions`;
the folds of Xid events and vanished GPUs are in :mod:`sidecar.gpu.tracker_events`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from sidecar.gpu.backend import (
    CLOCKS_HW_MASK,
    REBOOT_CLASS_ACTIONS,
    RESET_CLASS_ACTIONS,
    ComputeMode,
    EccCounters,
    EventRegistration,
    GpuEvent,
    GpuInfo,
    GpuLostError,
    GpuSample,
    MemoryInfo,
    NvmlError,
    RemappedRows,
    value_or_none,
)
from sidecar.gpu.conditions import GpuRef, lost_result
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.fold import CANARY_CHECK, POLL_CHECK, Book, Fold, GpuTrack, Note
from sidecar.gpu.latchstate import AddLatch, ClearOnReset, GpuLatchState, Latch, Observed, ObserveSample
from sidecar.gpu.sample_conditions import sample_results
from sidecar.gpu.tracker_events import absent_folds, event_fold
from sidecar.gpu.xid import XID_ECC_CONTAINED, XID_ECC_UNCONTAINED, XidTable
from sidecar.gpu.xid_conditions import xid_result

__all__ = ["CANARY_CHECK", "POLL_CHECK", "Fold", "GpuTrack", "GpuTracker", "Note"]


def increase(hist: deque[tuple[float, int]], now: float, value: int, window_s: float) -> int:
    """Append (now, value) and return value minus the smallest value within the window."""
    hist.append((now, value))
    while hist and now - hist[0][0] > window_s:
        hist.popleft()
    return value - min(v for _, v in hist)


def reset_evidence(obs: Observed, sample: GpuSample) -> str | None:
    """Why ``sample`` shows a reset against the baseline ``obs``, or None."""
    if (
        sample.reset_count is not None
        and obs.reset_count is not None
        and sample.reset_count != obs.reset_count
    ):
        return f"reset counter changed {obs.reset_count} -> {sample.reset_count}"
    ecc = value_or_none(sample.ecc)
    if isinstance(ecc, EccCounters):
        for label, prev, cur in (
            ("uncorrected", obs.volatile_uncorrected, ecc.volatile_uncorrected),
            ("corrected", obs.volatile_corrected, ecc.volatile_corrected),
        ):
            if prev is not None and cur is not None and cur < prev:
                return f"volatile {label} ECC counter went back {prev} -> {cur}"
    action = value_or_none(sample.recovery_action)
    if (
        obs.recovery_action is not None
        and (obs.recovery_action in RESET_CLASS_ACTIONS | REBOOT_CLASS_ACTIONS)
        and action == 0
    ):
        return "recovery action went back to none"
    return None


class GpuTracker:
    """Per-GPU state and the fault rules (see module doc)."""

    def __init__(self, config: GpuConfig, *, lose_vanished: bool) -> None:
        self.config = config
        self.lose_vanished = lose_vanished  # real NVML: a GPU no longer enumerated is lost
        self.tracks: dict[str, GpuTrack] = {}
        self.current: list[str] = []
        self.reset_generation = 0
        self.table = XidTable(config.xid_overrides)
        self._reported: set[str] = set()  # not enumerated, reported from their latches

    # -- inventory ----------------------------------------------------------------------------

    def enumerate(self, infos: Sequence[GpuInfo]) -> None:
        """The GPUs NVML lists now (identity changes update their naming)."""
        self.current = [i.uuid for i in infos]
        for info in infos:
            st = self.tracks.get(info.uuid)
            if st is None:
                self.tracks[info.uuid] = GpuTrack(info=info, ref=GpuRef.of(info))
            elif st.info != info:
                st.info, st.ref = info, GpuRef.of(info)

    def registered(self, regs: Iterable[EventRegistration]) -> None:
        for reg in regs:
            if reg.uuid in self.tracks:
                self.tracks[reg.uuid].registration = reg

    def resolve(self, uuid: str) -> str:
        """The GPU an event names: a handle that could not be mapped is the only GPU's."""
        if uuid not in self.tracks and len(self.current) == 1:
            return self.current[0]
        return uuid

    def event(self, ev: GpuEvent, *, now: float, wall: float, latches: GpuLatchState | None) -> Fold:
        """One NVML event (``ev.uuid`` resolved with :meth:`resolve`; ``latches``: its GPU's)."""
        uuid = self.resolve(ev.uuid)
        return event_fold(
            self.config, self.table, ev, uuid, self.tracks.get(uuid), latches, now=now, wall=wall
        )

    def absent(
        self, present: set[str], *, enumerated: float, now: float, latches: Mapping[str, GpuLatchState]
    ) -> list[Fold]:
        """The GPUs that left the inventory (see :func:`sidecar.gpu.tracker_events.absent_folds`);
        ``latches``: every GPU the store knows."""
        return absent_folds(
            self.config,
            self.tracks,
            self._reported,
            present,
            latches,
            lose_vanished=self.lose_vanished,
            enumerated=enumerated,
            now=now,
        )

    def live(self) -> list[GpuTrack]:
        return [self.tracks[u] for u in self.current if u in self.tracks]

    # -- what other components ask (GpuStateView) ---------------------------------------------

    def exclusive_process(self) -> bool:
        return any(
            value_or_none(st.last.compute_mode) == ComputeMode.EXCLUSIVE_PROCESS
            for st in self.live()
            if st.last is not None
        )

    def busy(self) -> bool:
        for st in self.live():
            util = value_or_none(st.last.utilization_gpu_pct) if st.last else None
            if isinstance(util, int) and util >= self.config.busy_utilization_pct:
                return True
        return False

    def compute_capability(self) -> str | None:
        return next((st.info.compute_capability for st in self.live() if st.info.compute_capability), None)

    def free_memory_mib(self) -> float | None:
        free = [
            m.free / (1024 * 1024)
            for st in self.live()
            if st.last is not None and isinstance(m := value_or_none(st.last.memory), MemoryInfo)
        ]
        return min(free) if free else None

    # -- folds --------------------------------------------------------------------------------

    def fold(self, sample: GpuSample, *, taken: float, now: float, latches: GpuLatchState | None) -> Fold:
        """Fold one sample, taken (its NVML calls started) at wall time ``taken``; ``latches``
        is the store's state of this GPU (None: the store does not know it yet)."""
        cfg = self.config
        uuid = sample.info.uuid
        out = Fold(uuid)
        book = Book(latches)
        st = self.tracks[uuid]
        first = not st.sampled
        st.sampled = True
        st.reset_required = None
        evidence = reset_evidence(book.state.observed, sample) if latches is not None else None
        if evidence is not None:
            self._on_reset(st, book, evidence, out)

        ecc = value_or_none(sample.ecc)
        obs = book.state.observed
        if isinstance(ecc, EccCounters) and ecc.volatile_uncorrected is not None:
            cur = ecc.volatile_uncorrected
            prev = obs.volatile_uncorrected
            if (prev is None and cur > 0) or (prev is not None and cur > prev):
                self._classify_ecc_increase(st, book, prev, cur, now, taken, out)
            elif first and prev is not None and cur == prev and cur > 0:
                # seen before this restart and not latched then: it was contained
                st.ecc_contained = book.state.of_kind("ecc") is None
            if cur == 0:
                st.ecc_contained = False
        remap = value_or_none(sample.remap)
        if isinstance(remap, RemappedRows) and remap.failure:
            book.do(
                AddLatch(
                    Latch(
                        kind="remap",
                        reason="RemapFailure",
                        message="row remapping failed (RMA criterion); GPU unusable until reset and replaced",
                        since=taken,
                    )
                )
            )
        action = value_or_none(sample.recovery_action)
        book.do(
            ObserveSample.of(
                taken,
                volatile_uncorrected=ecc.volatile_uncorrected
                if isinstance(ecc, EccCounters)
                else obs.volatile_uncorrected,
                volatile_corrected=ecc.volatile_corrected
                if isinstance(ecc, EccCounters)
                else obs.volatile_corrected,
                reset_count=sample.reset_count,
                recovery_action=action if isinstance(action, int) else obs.recovery_action,
            )
        )
        corrected_increase = 0
        if isinstance(ecc, EccCounters) and ecc.volatile_corrected is not None:
            corrected_increase = increase(
                st.corrected_hist, now, ecc.volatile_corrected, cfg.ecc_corrected_window_s
            )
        replay_increase = 0
        if isinstance(sample.pcie_replay_count, int):
            replay_increase = increase(
                st.replay_hist, now, sample.pcie_replay_count, cfg.pcie_replay_window_s
            )
        clocks = sample.clock_event_reasons
        if isinstance(clocks, int) and clocks & CLOCKS_HW_MASK:
            if st.hw_slowdown_since is None:
                st.hw_slowdown_since = now
        else:
            st.hw_slowdown_since = None
        st.last = sample
        st.last_taken = taken
        held = book.state.latches
        out.changes = book.changes
        out.latch_count = len(held)
        out.results = sample_results(self.config, st, sample, held, now, corrected_increase, replay_increase)
        return out

    def fold_error(
        self, info: GpuInfo, exc: NvmlError, *, taken: float, now: float, latches: GpuLatchState | None
    ) -> Fold:
        """A sample that failed with the GPU lost (latched, node-fatal) or needing a reset."""
        out = Fold(info.uuid)
        book = Book(latches)
        st = self.tracks[info.uuid]
        if isinstance(exc, GpuLostError):
            lost = Latch(
                kind="lost",
                reason="GpuLost",
                message=f"GPU {info.uuid} is lost (fallen off the bus or inaccessible): {exc.text}",
                scope="node",
                since=taken,
            )
            if book.do(AddLatch(lost)):
                out.notes.append(Note(logging.ERROR, "GPU lost", {"uuid": info.uuid, "error": exc.text}))
        else:
            st.reset_required = f"GPU requires a reset: {exc.text}"
        # a failing sample is a pre-reset observation too: latches up to it may clear
        book.do(ObserveSample.of(taken))
        held = book.state.latches
        out.changes = book.changes
        out.latch_count = len(held)
        out.results = [
            lost_result(st.ref, latch=book.state.of_kind("lost"), reset_required=st.reset_required),
            xid_result(st.ref, held, list(st.recent), now=now, window_s=self.config.xid_report_window_s),
        ]
        return out

    def _classify_ecc_increase(
        self, st: GpuTrack, book: Book, prev: int | None, cur: int, now: float, taken: float, out: Fold
    ) -> None:
        """An uncorrectable ECC increase: classify with the accompanying Xid, run the canary."""
        uuid = st.info.uuid
        window = self.config.ecc_xid_window_s
        near = [r for r in st.recent if abs(now - r.at) <= window]
        uncontained = [r for r in near if r.code in XID_ECC_UNCONTAINED]
        contained = [r for r in near if r.code == XID_ECC_CONTAINED]
        rise = f"volatile uncorrected ECC count rose {prev if prev is not None else 0} -> {cur}"
        if contained and not uncontained:
            st.ecc_contained = True
            out.notes.append(
                Note(logging.WARNING, "contained uncorrectable ECC error", {"uuid": uuid, "count": cur})
            )
        else:
            code = uncontained[0].code if uncontained else 0
            why = f" with Xid {code} (uncontained)" if code else " (no contained Xid 94 seen)"
            book.do(
                AddLatch(
                    Latch(
                        kind="ecc",
                        reason="EccUncorrectable",
                        message=f"{rise}{why}; GPU unusable until a reset is observed",
                        code=code,
                        since=taken,
                    )
                )
            )
            out.notes.append(
                Note(logging.ERROR, "uncorrectable ECC error", {"uuid": uuid, "count": cur, "xid": code})
            )
        out.triggers.append(CANARY_CHECK)

    def _on_reset(self, st: GpuTrack, book: Book, evidence: str, out: Fold) -> None:
        # Only latches set at or before the baseline sample (which still showed the pre-reset
        # state, possibly before a restart) are cleared: a fatal Xid latched after it may have
        # come after (or with) the reset, so it stays (fail closed) until the next evidence.
        cleared = book.do(ClearOnReset())
        st.ecc_contained = False
        st.recent.clear()
        st.corrected_hist.clear()
        self.reset_generation += 1
        out.reset = evidence
        out.notes.append(
            Note(
                logging.WARNING,
                "GPU reset observed",
                {
                    "uuid": st.info.uuid,
                    "evidence": evidence,
                    "cleared": [x.reason for x in cleared],
                    "generation": self.reset_generation,
                },
            )
        )
