"""Which runner the worker loads: the configured one, or for ``auto`` the first that loads of
tensorrt, cuda-kernel, onnxruntime; and the opt-in production engines. Each runner's library is
imported only when that runner is chosen."""

from __future__ import annotations

from pathlib import Path

from sidecar.canary.protocol import LoadRequest, ProductionSpec
from sidecar.canary.worker.memory import MIB
from sidecar.canary.worker.runners.base import Runner, RunnerError, RunnerUnavailable
from sidecar.engine.manifest import EngineManifest, load_manifest


def manifest(path: str | None, what: str) -> EngineManifest:
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

        return OnnxRuntimeRunner(manifest(req.manifest, "ONNX canary"))
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
            manifest(req.tensorrt_manifest, "TensorRT canary plan"),
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


def build_production(req: LoadRequest, spec: ProductionSpec | None = None) -> Runner | None:
    """The runner (not loaded yet) of production engine ``spec`` (default: the request's
    first), or None when the request names none. A ``tensorrt-plan`` manifest runs on
    TensorRT within its memory budget; an ``onnx`` one on ONNX Runtime (CPU)."""
    if spec is None:
        engines = req.engines()
        if not engines:
            return None
        spec = engines[0]
    m = manifest(spec.manifest, "production engine")
    if m.format == "onnx":
        from sidecar.canary.worker.runners.onnxruntime_runner import OnnxRuntimeRunner

        return OnnxRuntimeRunner(m)
    from sidecar.canary.worker.runners.tensorrt_runner import TensorRTRunner

    return TensorRTRunner(
        m,
        device=req.devices[0] if req.devices else 0,
        allow_engine_host_code=req.allow_engine_host_code,
        memory_budget_bytes=int(spec.memory_budget_mib * MIB),
    )
