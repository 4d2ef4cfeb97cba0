"""The serving side of the tensor-core SDC screen: config, judging, metrics, persisted latch.

:class:`sidecar.canary.component.CanaryComponent` calls :meth:`SdcScreen.judge` with the
worker's outputs of runner ``tensor-core``. The golden is recomputed here from the seed the
worker reports (:mod:`sidecar.canary.sdc`), so a worker that computes wrong answers cannot
also vouch for them. A round whose inputs did not advance (same seed and round as before) is
refused: the screen never compares the same data twice.

A mismatch is FATAL ``SilentDataCorruption``. Like fatal Xids it is persisted per GPU UUID
(``state_dir/sdc-latches.json``, atomic writes, :class:`sidecar.gpu.latches.LatchStore`), so
a restart of the sidecar does not forget it; it clears only on evidence: a GPU reset observed
(the reset generation changes, or the node rebooted) *and* then ``recovery_passes`` passing
rounds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from sidecar.canary import sdc
from sidecar.canary.metrics import SdcMetrics
from sidecar.gpu.latches import Latch, LatchStore, read_boot_id

STATE_FILE = "sdc-latches.json"
LATCH_KIND = "sdc"
REASON = "SilentDataCorruption"
MAX_MESSAGE = 2000  # characters of one SDC message (the mismatch count is always in it)
MAX_GPU_LABELS = 64  # metric series per SDC metric (one per GPU; more is a malformed worker)


@dataclass(slots=True)
class Judged:
    """One round, judged on every device."""

    verdicts: list[sdc.DeviceVerdict]
    corrupt: list[sdc.DeviceVerdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # invalid rounds (not SDC evidence)

    def sdc_message(self) -> str:
        text = "; ".join(v.describe() for v in self.corrupt)
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."

    def coverage(self) -> list[tuple[str, int, int, list[int]]]:
        """(uuid, covered, sms, missing SMs) of every device that gave a valid round."""
        return [(v.uuid, v.covered, v.meta.sms, v.missing_sms) for v in self.verdicts if not v.problem]


class SdcScreen:
    """Judge tensor-core rounds; keep the metrics and the persisted SDC latches."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        interval_s: float,
        state_dir: Path | None = None,
        boot_id: str | None = None,
    ) -> None:
        self.metrics = SdcMetrics(registry)
        self.interval_s = interval_s
        self.store: LatchStore | None = None
        if state_dir is not None:
            self.store = LatchStore(
                state_dir / STATE_FILE, boot_id=read_boot_id() if boot_id is None else boot_id
            )
            self.store.load()
        # uuid -> (base seed, last round judged): one entry per GPU (a new worker, a new seed)
        self._last: dict[str, tuple[int, int]] = {}
        self._labels: set[str] = set()

    def _label(self, uuid: str) -> str:
        """The metric label of a GPU: a worker reporting ever new UUIDs cannot grow the series."""
        if uuid in self._labels or len(self._labels) < MAX_GPU_LABELS:
            self._labels.add(uuid)
            return uuid
        return "other"

    def persisted(self) -> tuple[str, bool] | None:
        """The message of a persisted SDC latch and whether the node rebooted since, or None."""
        if self.store is None:
            return None
        found = [
            latch
            for latches in self.store.all_latches().values()
            for latch in latches
            if latch.kind == LATCH_KIND
        ]
        if not found:
            return None
        text = "; ".join(x.message for x in found)[:MAX_MESSAGE]
        return text, self.store.rebooted()

    async def judge(self, outputs: dict[str, np.ndarray]) -> Judged:
        """Golden + comparison off the event loop (tens of ms of numpy on a large GPU)."""
        verdicts = await asyncio.to_thread(sdc.judge_round, outputs)
        judged = Judged(verdicts)
        for v in verdicts:
            if v.problem:
                judged.problems.append(v.describe())
                self.metrics.rounds.labels(gpu=self._label(v.uuid), outcome="invalid").inc()
                continue
            if v.uuid not in self._last and len(self._last) >= MAX_GPU_LABELS:
                self._last.clear()  # a malformed worker inventing GPUs: keep the map bounded
            seed, last = self._last.get(v.uuid, (None, 0))
            if seed == v.meta.base_seed and v.meta.round_no <= last:
                judged.problems.append(
                    f"GPU {v.uuid}: round {v.meta.round_no} does not advance past {last}: the same "
                    "inputs would be compared twice"
                )
                self.metrics.rounds.labels(gpu=self._label(v.uuid), outcome="invalid").inc()
                continue
            self._last[v.uuid] = (v.meta.base_seed, v.meta.round_no)
            self._record(v, outputs)
            if v.corrupt:
                judged.corrupt.append(v)
        return judged

    def _record(self, v: sdc.DeviceVerdict, outputs: dict[str, np.ndarray]) -> None:
        m = self.metrics
        m.sms.labels(gpu=self._label(v.uuid)).set(v.meta.sms)
        m.sms_covered.labels(gpu=self._label(v.uuid)).set(v.covered)
        m.rounds.labels(gpu=self._label(v.uuid), outcome="mismatch" if v.corrupt else "pass").inc()
        if v.mismatch_count:
            m.mismatched_elements.labels(gpu=self._label(v.uuid)).inc(v.mismatch_count)
        timing = outputs.get(f"{sdc.OUT_TIME}@{v.ordinal}")
        if timing is not None and timing.size == 2 and np.isfinite(timing).all():
            device_s = float(timing[1])
            m.round_us.labels(gpu=self._label(v.uuid)).set(device_s * 1e6)
            m.sm_seconds_per_hour.labels(gpu=self._label(v.uuid)).set(
                v.covered * device_s * 3600.0 / self.interval_s
            )

    async def latch(self, judged: Judged) -> None:
        """Persist an SDC latch for every corrupt GPU (atomic write, off the loop)."""
        if self.store is None:
            return
        for v in judged.corrupt:
            self.store.remove(v.uuid, LATCH_KIND)  # keep the newest evidence only
            self.store.add(v.uuid, Latch(LATCH_KIND, REASON, v.describe()[:MAX_MESSAGE], since=time.time()))
        await asyncio.to_thread(self.store.save)

    async def clear(self) -> None:
        """Evidence seen (reset + passing rounds): drop the persisted SDC latches."""
        if self.store is None:
            return
        for uuid in list(self.store.all_latches()):
            self.store.remove(uuid, LATCH_KIND)
        await asyncio.to_thread(self.store.save)

    async def take_over(self, old: SdcScreen) -> None:
        """A reload's swap: the SDC latches the old screen holds that were not in the file this
        one read move here (by set, not time), then the file is written whole (off the loop)."""
        if self.store is None or old.store is None:
            return
        known = self.store.read_from_file()
        for uuid, latches in old.store.all_latches().items():
            for latch in latches:
                if latch.kind == LATCH_KIND and (uuid, latch) not in known:
                    self.store.add(uuid, latch)
        self.store.mark_dirty()
        await asyncio.to_thread(self.store.save)

    @property
    def problem(self) -> str | None:
        return self.store.problem if self.store is not None else None
