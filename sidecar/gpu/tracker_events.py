"""The folds of NVML events (Xids, ECC, recovery action) and of GPUs that left the inventory.

Pure, like :mod:`sidecar.gpu.tracker` (which calls these with its per-GPU state): an event and
the time in, a :class:`sidecar.gpu.fold.Fold` out. An Xid is classified with the
:class:`sidecar.gpu.xid.XidTable`; a GPU- or node-fatal one is latched (persisted) from the wall
time the backend received it; an Xid 94 right after an uncorrectable ECC increase makes that
increase contained (the ECC latch set for it is removed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping, Sequence

from sidecar.core.values import SERVICE_GPU, CheckResult, Severity
from sidecar.gpu.backend import MIG_ID_ANY, UNSUPPORTED, EventType, GpuEvent, GpuInfo
from sidecar.gpu.conditions import GPU_GATES, GpuRef, ecc_result, lost_result, remap_result
from sidecar.gpu.config import GpuConfig
from sidecar.gpu.fold import CANARY_CHECK, POLL_CHECK, Book, Fold, GpuTrack, Note, Retire
from sidecar.gpu.latchstate import AddLatch, GpuLatchState, Latch, RemoveLatch
from sidecar.gpu.xid import (
    XID_ECC_CONTAINED,
    XID_ECC_UNCONTAINED,
    XID_RECOVERY_ACTION_CHANGED,
    XidClass,
    XidTable,
    xid_reason,
)
from sidecar.gpu.xid_conditions import XidRecord, xid_result

# the signals a GPU that is no longer enumerated stops reporting (its latched ones stay)
_LIVE_SIGNALS = ("recovery_action", "thermal", "memory", "compute_mode", "pcie", "events", "inforom")
_LATCHED_SIGNALS = ("lost", "xid", "ecc", "remap")


def mig_id(value: int) -> int | str:
    """A MIG GPU / compute instance id for the log: "none" for NVML's "no instance" value."""
    return "none" if value == MIG_ID_ANY else value


def event_fold(
    cfg: GpuConfig,
    table: XidTable,
    ev: GpuEvent,
    uuid: str,
    st: GpuTrack | None,
    latches: GpuLatchState | None,
    *,
    now: float,
    wall: float,
) -> Fold:
    """One NVML event for GPU ``uuid`` (``st`` None: a GPU the tracker does not know)."""
    out = Fold(uuid)
    if not ev.event_type & EventType.XID_CRITICAL:
        if ev.event_type & (EventType.DOUBLE_BIT_ECC | EventType.GPU_RECOVERY_ACTION):
            out.triggers.append(POLL_CHECK)
        if ev.event_type & EventType.DOUBLE_BIT_ECC:
            out.triggers.append(CANARY_CHECK)
        return out
    code = ev.data
    cls = table.classify(code)
    if st is not None and st.info.mig_enabled and st.info.instances and ev.gpu_instance_id != MIG_ID_ANY:
        ours = any(
            i.gpu_instance_id == ev.gpu_instance_id
            and ev.compute_instance_id in (MIG_ID_ANY, i.compute_instance_id)
            for i in st.info.instances
        )
        if not ours:
            out.xid_ignored = code
            out.notes.append(
                Note(
                    logging.INFO,
                    "Xid of another MIG instance ignored",
                    {"uuid": uuid, "xid": code, "gi": mig_id(ev.gpu_instance_id)},
                )
            )
            return out
    out.xid = (code, cls.value)
    fatal = cls in (XidClass.NODE_FATAL, XidClass.GPU_FATAL) or (
        cls is XidClass.NVLINK and cfg.multi_gpu_model
    )
    out.notes.append(
        Note(
            logging.ERROR if fatal else logging.WARNING,
            "Xid event",
            {
                "uuid": uuid,
                "xid": code,
                "xid_class": cls.value,
                "description": table.describe(code),
                "gi": mig_id(ev.gpu_instance_id),
                "ci": mig_id(ev.compute_instance_id),
            },
        )
    )
    if cls is XidClass.UNKNOWN:
        out.triggers.append(CANARY_CHECK)
    if (
        fatal  # sample at once: a later reset is then told apart from the fault (latches)
        or code == XID_RECOVERY_ACTION_CHANGED
        or code in XID_ECC_UNCONTAINED
        or code == XID_ECC_CONTAINED
    ):
        out.triggers.append(POLL_CHECK)
    if st is None or cls is XidClass.IGNORE:
        return out
    received = ev.wall_time or wall  # when the backend received it: a later sample may clear it
    st.recent.append(
        XidRecord(
            code=code,
            cls=cls,
            at=now,
            wall=received,
            gpu_instance_id=ev.gpu_instance_id,
            compute_instance_id=ev.compute_instance_id,
            fatal=fatal,
        )
    )
    book = Book(latches)
    if fatal:
        scope = "node" if cls is XidClass.NODE_FATAL else "gpu"
        book.do(
            AddLatch(
                Latch(
                    kind="xid",
                    reason=xid_reason(code, cls),
                    message=f"Xid {code}: {table.describe(code)}",
                    scope=scope,
                    code=code,
                    since=received,
                )
            )
        )
    if code == XID_ECC_CONTAINED:
        ecc_latch = next((x for x in book.state.latches if x.kind == "ecc" and x.code == 0), None)
        if ecc_latch is not None and wall - ecc_latch.since <= cfg.ecc_xid_window_s:
            # the ECC increase seen just before is the contained one (Xid 94)
            book.do(RemoveLatch("ecc"))
            st.ecc_contained = True
        if st.last is not None:
            out.results.append(
                ecc_result(
                    st.ref,
                    st.last.ecc,
                    latch=book.state.of_kind("ecc"),
                    contained=st.ecc_contained,
                    corrected_increase=0,
                    corrected_warn=0,
                    corrected_window_s=cfg.ecc_corrected_window_s,
                )
            )
    held = book.state.latches
    out.changes = book.changes
    out.latch_count = len(held)
    out.results.append(xid_result(st.ref, held, list(st.recent), now=now, window_s=cfg.xid_report_window_s))
    return out


def retire(st: GpuTrack, *, keep: Sequence[str]) -> Retire:
    """The conditions a GPU stops reporting: all (it left with no latch) or its live signals."""
    uuids = [st.info.uuid, *(i.uuid for i in st.info.instances)]
    if keep:
        prefixes = [f"{SERVICE_GPU}/{u}/{sig}" for u in uuids for sig in _LIVE_SIGNALS if sig not in keep]
        return Retire(tuple(prefixes), (), drop_gpu=False)
    prefixes = [f"{SERVICE_GPU}/{u}/" for u in uuids]
    return Retire(tuple(prefixes), tuple(sorted(st.ref.gates - GPU_GATES)), drop_gpu=True)


def absent_folds(
    cfg: GpuConfig,
    tracks: MutableMapping[str, GpuTrack],
    reported: set[str],
    present: set[str],
    latches: Mapping[str, GpuLatchState],
    *,
    lose_vanished: bool,
    enumerated: float,
    now: float,
) -> list[Fold]:
    """GPUs no longer enumerated. With real NVML (``lose_vanished``) a container's GPUs are
    fixed, so one that vanishes fell off the bus: it is latched lost. A simulated GPU removed
    from the scenario without a latch leaves with its conditions, services and metric series (a
    phantom or removed GPU: ``gpu/inventory`` reports it when it was expected). One holding a
    fatal latch (an Xid 79, a lost GPU...) stays reported from its latches, gating, until
    evidence of a reset or a node reboot: vanishing is no evidence. ``reported`` holds the GPUs
    already reported from their latches (updated here)."""
    out: list[Fold] = []
    books = {u: Book(latches.get(u)) for u in set(tracks) | set(latches)}
    if lose_vanished:
        for uuid in [u for u in tracks if u not in present]:
            lost = Latch(
                kind="lost",
                reason="GpuLost",
                message=f"GPU {uuid} is no longer enumerated by NVML (fallen off the bus or inaccessible)",
                scope="node",
                since=enumerated,
            )
            if books[uuid].do(AddLatch(lost)):
                fold = Fold(uuid, changes=books[uuid].changes)
                fold.notes.append(Note(logging.ERROR, "GPU lost: no longer enumerated", {"uuid": uuid}))
                out.append(fold)
    latched = {u: b.state.latches for u, b in books.items() if b.state.latches}
    for uuid in [u for u in tracks if u not in present and u not in latched]:
        gone = tracks.pop(uuid)
        reported.discard(uuid)
        fold = Fold(uuid, retire=retire(gone, keep=()))
        fold.notes.append(
            Note(
                logging.INFO, "GPU left the inventory; its conditions and service are removed", {"uuid": uuid}
            )
        )
        out.append(fold)
    for uuid, held in latched.items():
        if uuid in present:
            reported.discard(uuid)
            continue
        st = tracks.get(uuid)
        if st is None:  # latched before a restart, not enumerated since
            info = GpuInfo(index=-1, uuid=uuid, name="(not enumerated)")
            st = tracks[uuid] = GpuTrack(info=info, ref=GpuRef.of(info))
        fold = Fold(uuid, latch_count=len(held))
        if uuid not in reported:
            reported.add(uuid)
            fold.notes.append(
                Note(
                    logging.ERROR,
                    "GPU no longer enumerated while holding fatal latches; they stay reported",
                    {"uuid": uuid, "reasons": [x.reason for x in held]},
                )
            )
            fold.retire = retire(st, keep=_LATCHED_SIGNALS)
        fold.results = not_enumerated_results(cfg, st, held, now=now)
        out.append(fold)
    return out


def not_enumerated_results(
    cfg: GpuConfig, st: GpuTrack, held: Sequence[Latch], *, now: float
) -> list[CheckResult]:
    """The conditions of a GPU that is not enumerated, from its latches alone."""
    ref = st.ref
    by_kind = {x.kind: x for x in held}
    lost = by_kind.get("lost")
    out = [
        lost_result(ref, latch=lost, reset_required=None)
        if lost is not None
        else ref.fail(
            "lost",
            "GpuNotEnumerated",
            f"GPU {st.info.uuid} is no longer enumerated by NVML and holds fatal latches",
            severity=Severity.CRITICAL,
        ),
        xid_result(ref, held, [], now=now, window_s=cfg.xid_report_window_s),
    ]
    if "ecc" in by_kind:
        out.append(
            ecc_result(
                ref,
                UNSUPPORTED,
                latch=by_kind["ecc"],
                contained=False,
                corrected_increase=0,
                corrected_warn=0,
                corrected_window_s=cfg.ecc_corrected_window_s,
            )
        )
    if "remap" in by_kind:
        out.append(remap_result(ref, UNSUPPORTED, UNSUPPORTED, latch=by_kind["remap"]))
    return out
