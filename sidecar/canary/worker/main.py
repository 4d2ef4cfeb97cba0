"""The canary worker: a child process that owns everything CUDA / TensorRT.

Started by :class:`sidecar.canary.supervisor.CanarySupervisor` as
``python -m sidecar.canary.worker [--allow-faults]``. It reads one JSON request per line on
stdin and answers on the original stdout (fd 1 is re-pointed at stderr first, so anything a C
library prints goes to the log, not into the protocol). Sticky CUDA errors, hangs and
segfaults stay in this process; the supervisor kills and replaces it.

``--allow-faults`` is passed only in simulation: without it, the ``fault`` field of a request
is ignored, so the production path never misbehaves on purpose.

This module is the request dispatch and the stdin loop; which runner loads is
:mod:`sidecar.canary.worker.selection`, the memory it reports :mod:`sidecar.canary.worker.memory`,
the load-time self-test :mod:`sidecar.canary.worker.determinism`, the simulated faults
:mod:`sidecar.canary.worker.faults`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from typing import Any, BinaryIO

import numpy as np

from sidecar.canary import protocol
from sidecar.canary.protocol import FaultSpec, LoadRequest, ProductionSpec, WorkerError
from sidecar.canary.worker import faults
from sidecar.canary.worker.determinism import determinism_self_test
from sidecar.canary.worker.memory import GpuMemoryProbe, rss_bytes
from sidecar.canary.worker.runners.base import Runner, RunnerError
from sidecar.canary.worker.selection import build_production, choose_and_load

log = logging.getLogger("sidecar.canary.worker")

EXIT_STICKY = 3  # exit code after reporting a sticky CUDA error (the context is dead)


class Worker:
    """The request loop. One request at a time; replies in order."""

    def __init__(self, out: BinaryIO, *, allow_faults: bool) -> None:
        self.out = out
        self.allow_faults = allow_faults
        self.runner: Runner | None = None
        self.runner_name = ""
        self.request: LoadRequest | None = None
        # the loaded production engines by manifest path, in load order
        self.productions: dict[str, Runner] = {}
        self.warmup_runs = 2
        self.warmed = False
        self.warmed_engines: set[str] = set()  # production engines past their warm-up runs
        self.memory = GpuMemoryProbe()
        self.leaked: list[np.ndarray] = []
        self.exit_after_reply: int | None = None

    def reply(self, msg: dict[str, Any]) -> None:
        msg.setdefault("rss_bytes", rss_bytes())
        self.out.write(protocol.dumps(msg))
        self.out.flush()

    def error_reply(self, op: str, err: WorkerError, **extra: Any) -> None:
        if err.sticky:
            self.exit_after_reply = EXIT_STICKY
        self.reply({"op": op, "ok": False, "error": err.to_dict(), **extra})

    def handle(self, msg: dict[str, Any]) -> bool:
        """Serve one request; False to stop."""
        op = msg.get("op")
        if op == protocol.OP_LOAD:
            self.load(LoadRequest.from_dict(msg))
        elif op == protocol.OP_RUN:
            self.run(msg)
        elif op == protocol.OP_RELEASE:
            key = msg.get("manifest")  # absent: every production engine (the one-engine form)
            for name in [k for k in self.productions if key is None or k == key]:
                self.productions.pop(name).close()
                self.warmed_engines.discard(name)
            self.reply({"op": op, "ok": True, "gpu_memory_bytes": self.memory.own()})
        elif op == protocol.OP_LOAD_ENGINE:
            self.load_engine(msg)
        elif op == protocol.OP_EXIT:
            return False
        else:
            self.error_reply(str(op), WorkerError("WorkerProtocolError", f"unknown op {op!r}"))
        return self.exit_after_reply is None

    def load(self, req: LoadRequest) -> None:
        t0 = time.perf_counter()
        self.memory.mark()
        self.warmup_runs = req.warmup_runs
        determinism: dict[str, Any] | None = None
        try:
            if req.tc_simulated_sms > 0 and not self.allow_faults:
                raise RunnerError(
                    "CanaryConfigInvalid",
                    "tensor_core.simulated_sms (the numpy model of the GPU) is refused outside simulation",
                )
            self.runner, detail = choose_and_load(req)
            if req.determinism_check and self.runner.name in ("onnxruntime", "tensorrt"):
                determinism = determinism_self_test(self.runner, req)
            self.runner_name = self.runner.name
            self.request = req
            details: list[str] = []
            for spec in req.engines():
                production = build_production(req, spec)
                assert production is not None
                self.productions[spec.manifest] = production
                details.append(production.load().detail)
            prod_detail = "; ".join(details)
        except RunnerError as exc:
            self.error_reply("load", self._with_memory(exc), load_s=time.perf_counter() - t0)
            return
        except Exception as exc:
            self.error_reply("load", _unexpected(exc), load_s=time.perf_counter() - t0)
            return
        self.warmed = False
        self.warmed_engines = set()
        self.reply(
            {
                "op": "load",
                "ok": True,
                "runner": self.runner_name,
                "detail": detail,
                "production_detail": prod_detail,
                "load_s": time.perf_counter() - t0,
                "gpu_memory_bytes": self.memory.own(),
                "determinism": determinism,
            }
        )

    def load_engine(self, msg: dict[str, Any]) -> None:
        """One more production engine into the running worker (one of the same manifest is
        closed first): a released engine whose files changed, verified again."""
        t0 = time.perf_counter()
        raw = msg.get("production")
        if self.request is None or self.runner is None:
            self.error_reply("load_engine", WorkerError("RunnerNotLoaded", "load_engine before load"))
            return
        if not isinstance(raw, dict) or not isinstance(raw.get("manifest"), str):
            self.error_reply("load_engine", WorkerError("WorkerProtocolError", f"bad production: {raw!r}"))
            return
        spec = ProductionSpec.from_dict(raw)
        old = self.productions.pop(spec.manifest, None)
        if old is not None:
            old.close()
        self.warmed_engines.discard(spec.manifest)
        try:
            production = build_production(self.request, spec)
            assert production is not None
            detail = production.load().detail
        except RunnerError as exc:
            self.error_reply("load_engine", self._with_memory(exc), load_s=time.perf_counter() - t0)
            return
        except Exception as exc:
            self.error_reply("load_engine", _unexpected(exc), load_s=time.perf_counter() - t0)
            return
        self.productions[spec.manifest] = production
        self.reply(
            {
                "op": "load_engine",
                "ok": True,
                "detail": detail,
                "load_s": time.perf_counter() - t0,
                "gpu_memory_bytes": self.memory.own(),
            }
        )

    def _with_memory(self, exc: RunnerError) -> WorkerError:
        message = exc.message
        if exc.reason == "InsufficientGpuMemory":
            numbers = self.memory.describe()
            if numbers:
                message = f"{message}; {numbers}"
        return WorkerError(exc.reason, message, exc.cuda_error, exc.sticky, exc.labels)

    def run(self, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        fault = FaultSpec.from_dict(msg.get("fault")) if self.allow_faults else None
        if self.runner is None:
            self.error_reply("run", WorkerError("RunnerNotLoaded", "run before load"), id=rid)
            return
        if fault is not None:
            faults.before_run(fault, self.leaked)
        gpu_fault = fault.gpu_fault if fault is not None else "none"
        try:
            warmup_s = 0.0
            cold = [k for k in self.productions if k not in self.warmed_engines]
            if not self.warmed or cold:
                t0 = time.perf_counter()
                for _ in range(self.warmup_runs):  # first-inference cost is excluded
                    if not self.warmed:
                        self.runner.infer()
                    for key in cold:
                        self.productions[key].infer()
                warmup_s = time.perf_counter() - t0
                self.warmed = True
                self.warmed_engines.update(cold)
            t0 = time.perf_counter()
            outputs = self.runner.infer(gpu_fault=gpu_fault)
            if fault is not None and fault.mode == "slow":
                time.sleep(max(0.0, fault.delay_ms) / 1000.0)
            latency = time.perf_counter() - t0
            engine_out = {key: r.infer() for key, r in self.productions.items()}
        except RunnerError as exc:
            self.error_reply("run", self._with_memory(exc), id=rid)
            return
        except Exception as exc:
            self.error_reply("run", _unexpected(exc), id=rid)
            return
        outputs = faults.on_outputs(fault, outputs)
        reply: dict[str, Any] = {
            "op": "run",
            "ok": True,
            "id": rid,
            "runner": self.runner_name,
            "outputs": protocol.encode_arrays(outputs),
            "latency_s": latency,
            "warmup_s": warmup_s,
            "gpu_memory_bytes": self.memory.own(),
        }
        if engine_out:
            reply["engine_outputs"] = {k: protocol.encode_arrays(v) for k, v in engine_out.items()}
        self.reply(reply)


def _unexpected(exc: BaseException) -> WorkerError:
    tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
    return WorkerError("WorkerError", f"unexpected error in worker: {tb}")


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the sidecar dies, even if it is stuck in a kernel
    (a hung worker would otherwise never read the EOF on stdin)."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    # fd 1 belongs to the protocol; everything printed goes to stderr.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = os.fdopen(proto_fd, "wb", buffering=0)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="canary-worker: %(message)s")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when we stop
    worker = Worker(out, allow_faults="--allow-faults" in args)
    for line in sys.stdin.buffer:
        try:
            msg = protocol.loads(line)
        except ValueError as exc:
            worker.error_reply("?", WorkerError("WorkerProtocolError", str(exc)))
            continue
        if not worker.handle(msg):
            break
    if worker.exit_after_reply is not None:
        os._exit(worker.exit_after_reply)  # a dead CUDA context: skip cleanup that would fail
    for r in (worker.runner, *worker.productions.values()):
        if r is not None:
            r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
