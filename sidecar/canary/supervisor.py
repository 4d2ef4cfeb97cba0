"""The serving side of the canary: start, feed, time and replace the worker process.

Everything here is asyncio and never blocks the loop: the worker is a separate interpreter
(``python -m sidecar.canary.worker``, started with exec, never a fork of this process) talking
JSON lines over pipes. Each request has a deadline (the first canary after a load its own,
longer one, because first inferences are slow); a worker that misses it is SIGKILLed (a hung
kernel cannot be interrupted any other way). Every death is turned into a :class:`Death` with a
reason and a metric label, and the next start waits an exponential backoff.

This module imports nothing that touches CUDA, TensorRT or ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.canary import protocol
from sidecar.canary.metrics import CanaryMetrics
from sidecar.canary.outcome import Death, RunOutcome, backoff_delay, describe_exit
from sidecar.canary.protocol import FaultSpec, LoadRequest, ProductionSpec, WorkerError

__all__ = ["CanarySupervisor", "SupervisorSettings", "backoff_delay", "describe_exit"]

log = logging.getLogger(__name__)

EXIT_STICKY = 3  # the worker's exit code after reporting a sticky CUDA error (worker.py)
_PIPE_LIMIT = 16 << 20


@dataclass(frozen=True, slots=True)
class SupervisorSettings:
    timeout_s: float = 5.0
    first_timeout_s: float = 60.0
    load_timeout_s: float = 120.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    allow_faults: bool = False  # simulation only: lets scenario faults reach the worker
    python: str = sys.executable
    env: dict[str, str] | None = None


class CanarySupervisor:
    """Owns one worker process at a time. Not re-entrant: callers serialise requests."""

    def __init__(
        self,
        load: LoadRequest,
        settings: SupervisorSettings,
        metrics: CanaryMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.load_request = load
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.proc: asyncio.subprocess.Process | None = None
        self.loaded = False
        self.loading = False
        self.runner = ""
        self.detail = ""
        self.determinism: dict[str, Any] | None = None  # the worker's load-time self-test
        self.first_canary_pending = False
        self.failures = 0  # consecutive deaths / load failures (drives the backoff)
        self.not_before = 0.0
        self.last_death: Death | None = None
        self.starts = 0
        self.rss_baseline: int | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_task: asyncio.Task[None] | None = None
        self._next_id = 0
        self._lock = asyncio.Lock()

    # --- state ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.loaded and self.proc is not None and self.proc.returncode is None

    def backoff_remaining(self) -> float:
        return max(0.0, self.not_before - self.clock())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> WorkerError | None:
        """Spawn a worker and load its runner. Returns ``None`` on success, else why not
        (the worker is then gone and the backoff armed)."""
        async with self._lock:
            return await self._start()

    async def _start(self) -> WorkerError | None:
        await self._kill()
        t0 = self.clock()
        args = [self.settings.python, "-m", "sidecar.canary.worker"]
        if self.settings.allow_faults:
            args.append("--allow-faults")
        self.loading = True
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=_PIPE_LIMIT,
                env=self.settings.env,
            )
        except OSError as exc:
            self.loading = False
            err = WorkerError("WorkerSpawnFailed", f"cannot start the canary worker: {exc}")
            self._record_death(Death("spawn_failed", err.reason, err.message))
            return err
        self.starts += 1
        self._stderr.clear()
        self._stderr_task = asyncio.create_task(self._drain_stderr(self.proc), name="canary-stderr")
        log.info("canary worker started", extra={"pid": self.proc.pid, "runner": self.load_request.runner})
        reply, death = await self._request(
            self.load_request.to_dict(), self.settings.load_timeout_s, timeout_reason="LoadTimeout"
        )
        self.loading = False
        if death is not None:
            return WorkerError(death.reason, death.message, labels=death.labels)
        assert reply is not None
        if not reply.get("ok"):
            err = WorkerError.from_dict(reply.get("error"))
            await self._kill()
            self._record_death(Death(err.cuda_error or err.reason, err.reason, err.message, err.labels))
            return err
        self.loaded = True
        self.first_canary_pending = True
        self.runner = str(reply.get("runner", ""))
        self.detail = str(reply.get("detail", ""))
        det = reply.get("determinism")
        self.determinism = dict(det) if isinstance(det, dict) else None
        self.rss_baseline = None
        self.metrics.worker_startup.set(self.clock() - t0)
        self._record_memory(reply)
        log.info(
            "canary worker loaded",
            extra={
                "pid": self.proc.pid,
                "runner": self.runner,
                "detail": self.detail,
                "startup_s": round(self.clock() - t0, 3),
            },
        )
        return None

    async def run(self, fault: FaultSpec | None = None) -> RunOutcome:
        """One canary with its deadline. The worker must be ``ready``."""
        async with self._lock:
            if not self.ready:
                return RunOutcome(False, error=WorkerError("WorkerNotReady", "no loaded worker"))
            self._next_id += 1
            msg: dict[str, Any] = {"op": protocol.OP_RUN, "id": self._next_id}
            if fault is not None and self.settings.allow_faults:
                msg["fault"] = fault.to_dict()
            first = self.first_canary_pending
            deadline = self.settings.first_timeout_s if first else self.settings.timeout_s
            reply, death = await self._request(msg, deadline, timeout_reason="CanaryTimeout")
            if death is not None:
                return RunOutcome(False, runner=self.runner, error=None, death=death)
            assert reply is not None
            self.first_canary_pending = False
            rss = int(reply.get("rss_bytes") or 0)
            self._record_memory(reply)
            if not reply.get("ok"):
                err = WorkerError.from_dict(reply.get("error"))
                if err.sticky:  # the worker exits by itself; make sure, and count the death
                    await self._kill(grace_s=2.0)
                    death = Death(
                        err.cuda_error or err.reason,
                        err.reason,
                        f"{err.message}; worker replaced",
                        err.labels,
                    )
                    self._record_death(death)
                    return RunOutcome(False, runner=self.runner, error=err, death=death, rss_bytes=rss)
                return RunOutcome(False, runner=self.runner, error=err, rss_bytes=rss)
            try:
                outputs = protocol.decode_arrays(reply.get("outputs"))
                prod_raw = reply.get("production_outputs")  # the one-engine form
                prod = protocol.decode_arrays(prod_raw) if prod_raw is not None else None
                engines_raw = reply.get("engine_outputs") or {}
                if not isinstance(engines_raw, dict):
                    raise ValueError("engine_outputs must be an object")
                engines = {str(k): protocol.decode_arrays(v) for k, v in engines_raw.items()}
            except ValueError as exc:
                err = WorkerError("WorkerProtocolError", f"bad outputs from worker: {exc}")
                return RunOutcome(False, runner=self.runner, error=err, rss_bytes=rss)
            self.failures = 0  # a worker that answers is healthy: the backoff starts over
            if self.rss_baseline is None:
                self.rss_baseline = rss
            latency = float(reply.get("latency_s") or 0.0)
            self.metrics.latency.labels(runner=self.runner).observe(latency)
            return RunOutcome(
                True,
                runner=self.runner,
                outputs=outputs,
                production_outputs=prod,
                engine_outputs=engines,
                latency_s=latency,
                warmup_s=float(reply.get("warmup_s") or 0.0),
                rss_bytes=rss,
            )

    async def notice_exit(self) -> Death | None:
        """Record a worker that died while idle (SIGKILL from outside, the OOM killer): its
        cause, a counted restart and the backoff, exactly as a death during a canary."""
        async with self._lock:
            proc = self.proc
            if proc is None or proc.returncode is None or not self.loaded:
                return None
            return await self._reap()

    async def release_production(self, manifest: str | None = None) -> None:
        """Drop production engine ``manifest`` in the worker (verify-then-release); every one
        without ``manifest``. A restarted worker does not load it again."""
        async with self._lock:
            engines = self.load_request.engines()
            kept = tuple(p for p in engines if manifest is not None and p.manifest != manifest)
            self.load_request = dataclasses.replace(self.load_request, production=None, productions=kept)
            if self.ready:
                msg: dict[str, Any] = {"op": protocol.OP_RELEASE}
                if manifest is not None:
                    msg["manifest"] = manifest
                reply, _ = await self._request(msg, self.settings.timeout_s, timeout_reason="CanaryTimeout")
                if reply is not None:
                    self._record_memory(reply)

    async def load_engine(self, spec: ProductionSpec) -> WorkerError | None:
        """Load production engine ``spec`` into the running worker (a released one whose files
        changed: verified again by the next rounds). ``None`` on success, and a restarted
        worker loads it too; else why not (a missed deadline or a sticky error replaces the
        worker, which then starts without it)."""
        async with self._lock:
            if not self.ready:
                return WorkerError("WorkerNotReady", "no loaded worker")
            msg = {"op": protocol.OP_LOAD_ENGINE, "production": spec.to_dict()}
            deadline = self.settings.load_timeout_s
            reply, death = await self._request(msg, deadline, timeout_reason="LoadTimeout")
            if death is not None:
                return WorkerError(death.reason, death.message, labels=death.labels)
            assert reply is not None
            self._record_memory(reply)
            if not reply.get("ok"):
                err = WorkerError.from_dict(reply.get("error"))
                if err.sticky:  # the worker exits by itself; make sure, and count the death
                    await self._kill(grace_s=2.0)
                    self._record_death(Death(err.cuda_error or err.reason, err.reason, err.message))
                return err
            others = tuple(p for p in self.load_request.engines() if p.manifest != spec.manifest)
            self.load_request = dataclasses.replace(
                self.load_request, production=None, productions=(*others, spec)
            )
            log.info("canary production engine loaded again", extra={"engine": spec.manifest})
            return None

    async def replace(self, cause: str, reason: str, message: str) -> Death:
        """Kill the worker on purpose (memory limit ...) and arm the backoff."""
        async with self._lock:
            await self._kill()
            death = Death(cause, reason, message)
            self._record_death(death)
            return death

    async def stop(self) -> None:
        async with self._lock:
            proc = self.proc
            if proc is not None and proc.returncode is None and proc.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    proc.stdin.write(protocol.dumps({"op": protocol.OP_EXIT}))
                    proc.stdin.close()
            await self._kill(grace_s=2.0)

    # --- internals --------------------------------------------------------------------------

    async def _request(
        self, msg: dict[str, Any], timeout_s: float, *, timeout_reason: str
    ) -> tuple[dict[str, Any] | None, Death | None]:
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(protocol.dumps(msg))
            await asyncio.wait_for(proc.stdin.drain(), timeout_s)
            line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        except TimeoutError:
            await self._kill()
            what = "load" if msg.get("op") in (protocol.OP_LOAD, protocol.OP_LOAD_ENGINE) else "canary"
            death = Death(
                timeout_reason,
                timeout_reason,
                f"{what} did not answer within {timeout_s:g}s; worker SIGKILLed",
            )
            self._record_death(death)
            return None, death
        except (ConnectionError, BrokenPipeError, ValueError, OSError):
            line = b""  # the worker is gone; its exit status says why
        except asyncio.CancelledError:
            # A reply may still come; it must never be read as the answer to a later request.
            self._kill_now()
            raise
        if not line:
            death = await self._reap()
            return None, death
        try:
            return protocol.loads(line), None
        except ValueError as exc:
            await self._kill()
            death = Death("protocol_error", "WorkerProtocolError", f"worker sent garbage: {exc}")
            self._record_death(death)
            return None, death

    async def _reap(self) -> Death:
        """The worker closed its pipe: wait briefly for its status and describe it."""
        proc = self.proc
        assert proc is not None
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            await self._kill()
        cause, message = describe_exit(proc.returncode)
        await self._join_stderr()
        tail = self._stderr[-1] if self._stderr else ""
        labels = {"exit": cause}
        if tail:
            message = f"{message}; last stderr: {tail[:300]}"
        death = Death(cause, "WorkerCrashed", message, labels)
        self.loaded = False
        self._record_death(death)
        return death

    def _record_death(self, death: Death) -> None:
        self.loaded = False
        self.loading = False
        self.failures += 1
        delay = backoff_delay(self.failures, self.settings.backoff_initial_s, self.settings.backoff_max_s)
        self.not_before = self.clock() + delay
        self.last_death = death
        self.metrics.restarts.labels(cause=death.cause).inc()
        self.metrics.worker_gpu_memory.clear()
        log.warning(
            "canary worker lost",
            extra={
                "cause": death.cause,
                "reason": death.reason,
                "detail": death.message,
                "restart_in_s": round(delay, 3),
                "consecutive_failures": self.failures,
            },
        )

    def _record_memory(self, reply: dict[str, Any]) -> None:
        rss = reply.get("rss_bytes")
        if isinstance(rss, int):
            self.metrics.worker_rss.set(rss)
        mem = reply.get("gpu_memory_bytes")
        if isinstance(mem, dict):
            for gpu, value in mem.items():
                if isinstance(value, int):
                    self.metrics.worker_gpu_memory.labels(gpu=str(gpu)).set(value)

    def _kill_now(self) -> None:
        self.loaded = False
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    async def _kill(self, grace_s: float = 0.0) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None and grace_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace_s)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()  # SIGKILL: the only thing that ends a hung kernel
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10.0)
        await self._join_stderr()
        self.proc = None
        self.loaded = False

    async def _join_stderr(self) -> None:
        task = self._stderr_task
        if task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), 1.0)

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            try:
                line = await proc.stderr.readline()
            except (ValueError, OSError):
                return
            if not line:
                return
            text = line.decode("utf-8", errors="replace").rstrip()
            if text:
                self._stderr.append(text)
                log.info("canary worker: %s", text, extra={"pid": proc.pid})
