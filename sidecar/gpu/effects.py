"""Carrying out what the GPU tracker decided (:class:`sidecar.gpu.fold.Fold`): latch changes into
the store (memory only: the component saves off the event loop), log lines, metrics, retiring the
conditions of a GPU that left, triggers; and which GPU conditions fail now (``gpu_fault``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from sidecar.core.protocols import ConditionRetirer, ResultSink
from sidecar.core.values import CheckResult, Severity
from sidecar.gpu.fold import Fold, Retire
from sidecar.gpu.latches import LatchStore
from sidecar.gpu.metrics import GpuMetrics


class FoldEffects:
    """The side effects of folds. Called under ``lock`` (the component's: event loop and
    listener thread); ``sink`` is set when the component starts."""

    def __init__(
        self, latches: LatchStore, metrics: GpuMetrics, *, lock: threading.RLock, log: logging.Logger
    ) -> None:
        self.latches = latches
        self.metrics = metrics
        self.sink: ResultSink | None = None
        self._lock = lock
        self._log = log
        self._failing: dict[str, bool] = {}  # GPU-layer condition -> failing at CRITICAL or worse

    def apply(self, fold: Fold) -> None:
        """Latch changes, log lines, metrics and retirement of one fold."""
        uuid = fold.uuid
        with self._lock:
            if fold.changes:
                self.latches.apply(uuid, fold.changes)
            for note in fold.notes:
                self._log.log(note.level, note.message, extra=dict(note.extra))
            if fold.reset is not None:
                self.metrics.resets.labels(uuid=uuid).inc()
            if fold.xid is not None:
                code, cls = fold.xid
                self.metrics.xid.labels(uuid=uuid, code=str(code), **{"class": cls}).inc()
            if fold.xid_ignored is not None:
                self.metrics.xid_ignored.labels(uuid=uuid, code=str(fold.xid_ignored)).inc()
            if fold.retire is not None:
                self._retire(uuid, fold.retire)
            if fold.latch_count is not None:
                self.metrics.fatal_latches.labels(uuid=uuid).set(fold.latch_count)

    def _retire(self, uuid: str, retire: Retire) -> None:
        if retire.drop_gpu:  # left without latches: its baseline and metric series go
            self.latches.forget(uuid)
            self.metrics.remove_gpu(uuid)
        for name in [n for n in self._failing if n.startswith(retire.prefixes)]:
            del self._failing[name]
        sink = self.sink
        if isinstance(sink, ConditionRetirer):
            sink.retire(list(retire.prefixes), list(retire.services))

    def trigger(self, names: Sequence[str]) -> None:
        sink = self.sink
        if sink is not None:
            for name in names:
                sink.trigger(name)

    def record(self, results: Sequence[CheckResult]) -> None:
        """Remember which GPU-layer conditions fail (what ``gpu_fault`` answers)."""
        with self._lock:
            for r in results:
                if r.name.startswith("gpu/") or r.name == "nvml":
                    self._failing[r.name] = (not r.ok) and r.severity >= Severity.CRITICAL

    def gpu_fault(self) -> bool:
        with self._lock:
            return any(self._failing.values())
