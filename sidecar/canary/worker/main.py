"""The canary worker: a child process that owns everything CUDA / TensorRT.

Started by :class:`sidecar.canary.supervisor.CanarySupervisor` as
``python -m sidecar.canary.worker [--allow-faults]``. It reads one JSON request per line on
stdin and answers on the original stdout (fd 1 is re-pointed at stderr first, so anything a C
library prints goes to the log, not into the protocol). Sticky CUDA errors, hangs and
segfaults stay in this process; the supervisor kills and replaces it.

``--allow-faults`` is passed only in simulation: without it, the ``fault`` field of a request
is ignored, so the production path never misbehaves on purpose.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from sidecar.canary import protocol
from sidecar.canary.protocol import FaultSpec, LoadRequest, WorkerError
from sidecar.canary.worker.runners.base import Runner, RunnerError, RunnerUnavailable
from sidecar.engine.manifest import EngineManifest, load_manifest

log = logging.getLogger("sidecar.canary.worker")

EXIT_STICKY = 3  # exit code after reporting a sticky CUDA error (the context is dead)
_MIB = 1 << 20


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class GpuMemoryProbe:
    """GPU memory this process holds, per NVML index, measured through NVML when present.

    Per-process accounting (``nvmlDeviceGetComputeRunningProcesses`` matched by PID) is
    preferred; inside a PID namespace the PIDs may not match, so the used-memory delta
    around ``load`` is the fallback (approximate if others allocate at the same time).
    """

    def __init__(self) -> None:
        self._nvml: Any = None
        self._before: dict[str, int] = {}
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no NVML (CPU machine): report nothing
            self._nvml = None

    def _used(self) -> dict[str, int]:
        nv = self._nvml
        out: dict[str, int] = {}
        if nv is None:
            return out
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                out[str(i)] = int(nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i)).used)
        except Exception:
            return {}
        return out

    def mark(self) -> None:
        self._before = self._used()

    def own(self) -> dict[str, int]:
        nv = self._nvml
        if nv is None:
            return {}
        pid = os.getpid()
        found: dict[str, int] = {}
        try:
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                for p in nv.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.pid == pid and p.usedGpuMemory is not None:
                        found[str(i)] = int(p.usedGpuMemory)
        except Exception:
            found = {}
        if found:
            return found
        now = self._used()
        return {k: max(0, v - self._before.get(k, v)) for k, v in now.items() if k in self._before}

    def describe(self) -> str:
        """Free / total per GPU, for memory-pressure messages."""
        nv = self._nvml
        if nv is None:
            return ""
        try:
            parts = []
            for i in range(nv.nvmlDeviceGetCount()):
                m = nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByIndex(i))
                parts.append(
                    f"GPU {i}: {m.free / _MIB:.0f} MiB free of {m.total / _MIB:.0f} MiB "
                    f"({m.used / _MIB:.0f} MiB used)"
                )
            return "; ".join(parts)
        except Exception:
            return ""


def _manifest(path: str | None, what: str) -> EngineManifest:
    if not path:
        raise RunnerError("CanaryConfigInvalid", f"no {what} manifest configured")
    try:
        return load_manifest(Path(path))
    except FileNotFoundError as exc:
        raise RunnerUnavailable("EngineMissing", f"{what} manifest {path} not found") from exc
    except Exception as exc:  # ConfigError or OSError: a broken manifest is a reason
        raise RunnerError("ManifestInvalid", f"{what} manifest {path}: {exc}") from exc


def build_runner(req: LoadRequest, kind: str) -> Runner:
    """The runner for one kind (imports stay inside: only the chosen library is loaded)."""
    if kind == "onnxruntime":
        from sidecar.canary.worker.runners.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(_manifest(req.manifest, "ONNX canary"))
    if kind == "cuda-kernel":
        from sidecar.canary.worker.runners.cuda_kernel import CudaKernelRunner

        return CudaKernelRunner(req.devices)
    if kind == "tensor-core":
        from sidecar.canary.worker.runners.tensor_core import SimulatedTensorCoreDevice, TensorCoreRunner

        sim: tuple[SimulatedTensorCoreDevice, ...] = ()
        if req.tc_simulated_sms > 0:
            sim = (SimulatedTensorCoreDevice(0, req.tc_simulated_sms, blocks_per_sm=req.tc_blocks_per_sm),)
        return TensorCoreRunner(
            req.devices,
            blocks_per_sm=req.tc_blocks_per_sm,
            allow_injection=req.tc_allow_injection,
            simulated=sim,
        )
    if kind == "tensorrt":
        from sidecar.canary.worker.runners.tensorrt_runner import TensorRTRunner

        return TensorRTRunner(
            _manifest(req.tensorrt_manifest, "TensorRT canary plan"),
            device=req.devices[0] if req.devices else 0,
            allow_engine_host_code=req.allow_engine_host_code,
        )
    raise RunnerError("CanaryConfigInvalid", f"unknown runner {kind!r}")


def choose_and_load(req: LoadRequest) -> tuple[Runner, str]:
    """Load the configured runner; for ``auto`` try tensorrt, cuda-kernel, onnxruntime in that
    order and say why each earlier one was passed over."""
    if req.runner != "auto":
        runner = build_runner(req, req.runner)
        return runner, runner.load().detail
    skipped: list[str] = []
    for kind in ("tensorrt", "cuda-kernel", "onnxruntime"):
        if kind == "tensorrt" and not (req.tensorrt_manifest and Path(req.tensorrt_manifest).exists()):
            skipped.append("tensorrt: no canary plan")
            continue
        try:
            runner = build_runner(req, kind)
            info = runner.load()
        except RunnerUnavailable as exc:
            skipped.append(f"{kind}: {exc.message.split('. ')[0][:120]}")
            continue
        note = f" (auto; skipped {'; '.join(skipped)})" if skipped else " (auto)"
        return runner, info.detail + note
    raise RunnerUnavailable("RunnerUnavailable", "no canary runner available: " + "; ".join(skipped))


class Worker:
    """The request loop. One request at a time; replies in order."""

    def __init__(self, out: BinaryIO, *, allow_faults: bool) -> None:
        self.out = out
        self.allow_faults = allow_faults
        self.runner: Runner | None = None
        self.runner_name = ""
        self.production: Runner | None = None
        self.warmup_runs = 2
        self.warmed = False
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
            if self.production is not None:
                self.production.close()
                self.production = None
            self.reply({"op": op, "ok": True, "gpu_memory_bytes": self.memory.own()})
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
            prod_detail = ""
            if req.production is not None:
                from sidecar.canary.worker.runners.tensorrt_runner import TensorRTRunner

                spec = req.production
                self.production = TensorRTRunner(
                    _manifest(spec.manifest, "production engine"),
                    device=req.devices[0] if req.devices else 0,
                    allow_engine_host_code=req.allow_engine_host_code,
                    memory_budget_bytes=int(spec.memory_budget_mib * _MIB),
                )
                prod_detail = self.production.load().detail
        except RunnerError as exc:
            self.error_reply("load", self._with_memory(exc), load_s=time.perf_counter() - t0)
            return
        except Exception as exc:
            self.error_reply("load", _unexpected(exc), load_s=time.perf_counter() - t0)
            return
        self.warmed = False
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
            self._pre_fault(fault)
        gpu_fault = fault.gpu_fault if fault is not None else "none"
        try:
            warmup_s = 0.0
            if not self.warmed:
                t0 = time.perf_counter()
                for _ in range(self.warmup_runs):  # first-inference cost is excluded
                    self.runner.infer()
                    if self.production is not None:
                        self.production.infer()
                warmup_s = time.perf_counter() - t0
                self.warmed = True
            t0 = time.perf_counter()
            outputs = self.runner.infer(gpu_fault=gpu_fault)
            if fault is not None and fault.mode == "slow":
                time.sleep(max(0.0, fault.delay_ms) / 1000.0)
            latency = time.perf_counter() - t0
            prod_out = self.production.infer() if self.production is not None else None
        except RunnerError as exc:
            self.error_reply("run", self._with_memory(exc), id=rid)
            return
        except Exception as exc:
            self.error_reply("run", _unexpected(exc), id=rid)
            return
        if fault is not None and fault.mode == "wrong":
            outputs = {k: _perturb(v) for k, v in outputs.items()}
        elif fault is not None and fault.mode == "drift":
            outputs = {k: _flip_lowest_bit(v) for k, v in outputs.items()}
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
        if prod_out is not None:
            reply["production_outputs"] = protocol.encode_arrays(prod_out)
        self.reply(reply)

    def _pre_fault(self, fault: FaultSpec) -> None:
        if fault.mode == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)  # a real segfault-like death
            time.sleep(5)  # in case the signal is handled: never answer
            os.abort()
        elif fault.mode == "hang":
            while True:  # a real hang: only SIGKILL ends it
                time.sleep(3600)
        elif fault.mode == "leak":
            chunk = np.ones(max(1, int(fault.leak_mib * _MIB)), dtype=np.uint8)  # touched pages
            self.leaked.append(chunk)


def determinism_self_test(runner: Runner, req: LoadRequest) -> dict[str, Any]:
    """Run the canary twice on the same input; report whether the outputs are bit-identical,
    the largest difference otherwise, and the sha256 of the engine file the golden belongs to
    (TensorRT builds are not bit-identical across builds: a golden is valid for one file)."""
    first = runner.infer()
    second = runner.infer()
    bitwise = set(first) == set(second) and all(
        first[k].shape == second[k].shape and first[k].tobytes() == second[k].tobytes() for k in first
    )
    path = req.tensorrt_manifest if runner.name == "tensorrt" else req.manifest
    try:
        m = load_manifest(Path(path)) if path else None
    except Exception:  # the runner loaded it already; a failure here only loses the hash
        m = None
    atol, rtol = (m.tolerance.atol, m.tolerance.rtol) if m is not None else (0.0, 0.0)
    worst = 0.0
    within = set(first) == set(second)
    for k in set(first) & set(second):
        if first[k].shape != second[k].shape:
            within = False
            continue
        a, b = first[k].astype(np.float64), second[k].astype(np.float64)
        if a.size:
            diff = np.nan_to_num(np.abs(a - b), nan=np.inf)
            worst = max(worst, float(diff.max()))
            within = within and bool((diff <= atol + rtol * np.abs(a)).all())
    out: dict[str, Any] = {
        "runner": runner.name,
        "bitwise": bitwise,
        "max_abs_diff": worst,
        "within_tolerance": within,
    }
    if m is not None:
        out["manifest_sha256"] = m.sha256
        out["engine_sha256"] = _sha256(m.path)
    return out


def _sha256(path: Path) -> str | None:
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _perturb(arr: np.ndarray) -> np.ndarray:
    """A plausible silent corruption: one element off by a visible amount."""
    out = np.array(arr, copy=True)
    if out.size:
        flat = out.reshape(-1)
        flat[0] = flat[0] + (abs(flat[0]) * 0.5 + 1)
    return out


def _flip_lowest_bit(arr: np.ndarray) -> np.ndarray:
    """A corruption the golden's tolerance cannot see: the lowest bit of one element flipped
    (the exact digest changes, the comparison within tolerance passes): what replica
    consistency (docs/trends.md) exists to catch."""
    out = np.array(arr, copy=True)
    if out.size and out.dtype.itemsize in (1, 2, 4, 8):
        view = out.reshape(-1).view(np.dtype(f"u{out.dtype.itemsize}"))
        view[0] ^= 1
    return out


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
    for r in (worker.runner, worker.production):
        if r is not None:
            r.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
