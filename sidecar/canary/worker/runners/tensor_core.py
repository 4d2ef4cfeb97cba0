"""The tensor-core SDC canary: int8 and bf16 ``mma.sync`` on every SM, exact answers.

Each round launches ``SMs x blocks_per_sm`` one-warp blocks (NVRTC, driver API, the device's
primary context, as the kernel canary does). Every block runs two chained int8
``m16n8k32`` and two chained bf16 ``m16n8k16`` MMAs on its own fresh tile and records the SM it
ran on (``%smid``). Block placement is the scheduler's choice, so coverage is checked after
every launch: when an SM got no block, the round launches again with the next inputs (up to
:data:`sidecar.canary.sdc.MAX_LAUNCHES` launches) and reports what it covered. Inputs come from
``(base_seed, round, launch)`` (see :mod:`sidecar.canary.sdc`); the serving process recomputes
the golden from that seed and compares bit for bit.

Not covered: Hopper ``wgmma`` (warpgroup MMA from shared-memory descriptors) is not built;
``mma.sync`` runs on the same tensor cores through the legacy warp-level path. FP8, HBM
outside the canary's buffers and copy engines are not screened (docs/sdc.md).

Fault injection (tests and the GPU bench only): ``gpu_fault="sdc_flip:<sm>:<bit>[:path]"``
makes the kernel flip one bit of C[0,0] in every block on that SM. Refused unless the runner
was built with ``allow_injection`` (config ``canary.tensor_core.allow_fault_injection``) *and*
the environment has ``TRT_HEALTH_SDC_FAULT_INJECTION=1``; the worker only forwards faults
when started with ``--allow-faults``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sidecar.canary import sdc
from sidecar.canary.worker.runners.base import LoadInfo, RunnerError, RunnerUnavailable
from sidecar.canary.worker.runners.cuda_kernel import check, compile_ptx, open_cuda
from sidecar.canary.worker.sdc_model import fast_simulate_launch

INJECTION_ENV = sdc.INJECTION_ENV
DEFAULT_BLOCKS_PER_SM = 8  # measured on an H200: 1,056 one-warp blocks landed on 132/132 SMs

TC_SOURCE = rb"""
extern "C" __global__ void __launch_bounds__(32) tc_canary(
    const int* __restrict__ a8, const int* __restrict__ bt8,
    const unsigned* __restrict__ a16, const unsigned* __restrict__ bt16,
    int* __restrict__ c8, unsigned* __restrict__ c16, unsigned* __restrict__ smid,
    int inject_sm, unsigned inject_mask, int inject_path)
{
    const int b = blockIdx.x;
    const int lane = threadIdx.x;
    const int g = lane >> 2, t = lane & 3;
    /* int8: A 16x64 bytes row-major (16 words a row), B^T 8x64 (B column-major). */
    const int* A = a8 + b * (16 * 64 / 4);
    const int* B = bt8 + b * (8 * 64 / 4);
    int acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
#pragma unroll
    for (int k0 = 0; k0 < 64; k0 += 32) {
        int ra0 = A[g * 16 + (k0 + 4 * t) / 4];
        int ra1 = A[(g + 8) * 16 + (k0 + 4 * t) / 4];
        int ra2 = A[g * 16 + (k0 + 4 * t + 16) / 4];
        int ra3 = A[(g + 8) * 16 + (k0 + 4 * t + 16) / 4];
        int rb0 = B[g * 16 + (k0 + 4 * t) / 4];
        int rb1 = B[g * 16 + (k0 + 4 * t + 16) / 4];
        asm volatile(
            "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+r"(acc0), "+r"(acc1), "+r"(acc2), "+r"(acc3)
            : "r"(ra0), "r"(ra1), "r"(ra2), "r"(ra3), "r"(rb0), "r"(rb1));
    }
    /* bf16: A 16x32 halves row-major (16 words a row), B^T 8x32. */
    const unsigned* A2 = a16 + b * (16 * 32 / 2);
    const unsigned* B2 = bt16 + b * (8 * 32 / 2);
    float f0 = 0.f, f1 = 0.f, f2 = 0.f, f3 = 0.f;
#pragma unroll
    for (int k0 = 0; k0 < 32; k0 += 16) {
        unsigned ra0 = A2[g * 16 + (k0 + 2 * t) / 2];
        unsigned ra1 = A2[(g + 8) * 16 + (k0 + 2 * t) / 2];
        unsigned ra2 = A2[g * 16 + (k0 + 2 * t + 8) / 2];
        unsigned ra3 = A2[(g + 8) * 16 + (k0 + 2 * t + 8) / 2];
        unsigned rb0 = B2[g * 16 + (k0 + 2 * t) / 2];
        unsigned rb1 = B2[g * 16 + (k0 + 2 * t + 8) / 2];
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(f0), "+f"(f1), "+f"(f2), "+f"(f3)
            : "r"(ra0), "r"(ra1), "r"(ra2), "r"(ra3), "r"(rb0), "r"(rb1));
    }
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    unsigned u0 = (unsigned)acc0, u1 = (unsigned)acc1, u2 = (unsigned)acc2, u3 = (unsigned)acc3;
    unsigned h0 = __float_as_uint(f0), h1 = __float_as_uint(f1);
    unsigned h2 = __float_as_uint(f2), h3 = __float_as_uint(f3);
    if (lane == 0 && (int)sm == inject_sm) { /* test-only fault injection */
        if (inject_path == 0) u0 ^= inject_mask; else h0 ^= inject_mask;
    }
    int* C8 = c8 + b * 128;
    unsigned* C16 = c16 + b * 128;
    C8[g * 8 + 2 * t] = (int)u0;
    C8[g * 8 + 2 * t + 1] = (int)u1;
    C8[(g + 8) * 8 + 2 * t] = (int)u2;
    C8[(g + 8) * 8 + 2 * t + 1] = (int)u3;
    C16[g * 8 + 2 * t] = h0;
    C16[g * 8 + 2 * t + 1] = h1;
    C16[(g + 8) * 8 + 2 * t] = h2;
    C16[(g + 8) * 8 + 2 * t + 1] = h3;
    if (lane == 0) smid[b] = sm;
}
"""


class TensorCoreDevice(Protocol):
    """One GPU as the runner drives it: the real CUDA device or the numpy model."""

    ordinal: int
    uuid: str
    sms: int
    blocks: int  # blocks per launch (SMs x blocks per SM)

    def launch(
        self, inp: sdc.LaunchInputs, injection: sdc.Injection | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(C8 int32, C16 bits uint32, smid uint32) of one launch."""
        ...

    def close(self) -> None: ...


class SimulatedTensorCoreDevice:
    """The numpy model of the kernel (CI): blocks land on SMs round-robin, except that the
    first launch of a round skips ``skip_sms`` (to exercise the coverage retry)."""

    def __init__(
        self,
        ordinal: int = 0,
        sms: int = 16,
        *,
        blocks_per_sm: int = 2,
        skip_sms: tuple[int, ...] = (),
        id_stride: int = 1,
    ) -> None:
        self.ordinal = ordinal
        self.uuid = f"GPU-00000000-0000-0000-0000-{ordinal:012d}"
        self.sms = sms
        self.blocks = sms * blocks_per_sm
        self.skip_sms = skip_sms
        self.id_stride = id_stride  # > 1: non-contiguous %smid numbering, as PTX allows
        self.launches = 0

    def launch(
        self, inp: sdc.LaunchInputs, injection: sdc.Injection | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        usable = [s for s in range(self.sms) if s not in self.skip_sms] if self.launches == 0 else []
        pool = np.array(usable or list(range(self.sms)), np.uint32)
        self.launches += 1
        placement = pool[np.arange(inp.blocks) % len(pool)] * np.uint32(self.id_stride)
        return fast_simulate_launch(inp, placement, injection)

    def close(self) -> None:
        return None

    def new_round(self) -> None:
        self.launches = 0


def _uuid_text(raw: Any) -> str:
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    data = raw if isinstance(raw, bytes) else bytes(int(x) & 0xFF for x in raw)
    h = data[:16].hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def compile_tc_ptx(nvrtc: Any, arch: str) -> bytes:
    """NVRTC source -> PTX for ``compute_XY`` (mma.sync needs sm_80 or later)."""
    return compile_ptx(
        nvrtc,
        TC_SOURCE,
        name=b"tc_canary.cu",
        options=[f"--gpu-architecture={arch}".encode()],
        failure="NVRTC compile of the tensor-core canary failed",
        log_chars=2000,
    )


@dataclass
class CudaTensorCoreDevice:
    """The kernel on one CUDA device: module, buffers and stream made once."""

    ordinal: int
    blocks_per_sm: int
    driver: Any
    nvrtc: Any
    uuid: str = "unknown"
    sms: int = 0
    blocks: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        drv = self.driver
        attr = drv.CUdevice_attribute
        self.device = check(drv, drv.cuDeviceGet(self.ordinal), f"cuDeviceGet({self.ordinal})")
        raw = check(drv, drv.cuDeviceGetName(64, self.device), "cuDeviceGetName")
        self.name = raw.split(b"\0", 1)[0].decode(errors="replace") if isinstance(raw, bytes) else ""
        try:  # the UUID names the GPU in findings; its absence must not stop the screen
            get_uuid = getattr(drv, "cuDeviceGetUuid_v2", None) or drv.cuDeviceGetUuid
            uu = check(drv, get_uuid(self.device), "cuDeviceGetUuid")
            self.uuid = _uuid_text(getattr(uu, "bytes", uu))
        except (RunnerError, TypeError, ValueError, AttributeError):
            self.uuid = f"cuda-device-{self.ordinal}"

        def attribute(which: str) -> int:
            raw = drv.cuDeviceGetAttribute(getattr(attr, which), self.device)
            return int(check(drv, raw, f"cuDeviceGetAttribute({which})"))

        self.sms = attribute("CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT")
        major = attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR")
        minor = attribute("CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR")
        if major < 8:
            raise RunnerUnavailable(
                "TensorCoreUnsupported",
                f"device {self.ordinal} ({self.name}) is sm_{major}{minor}: int8/bf16 mma.sync needs sm_80+",
            )
        if not 1 <= self.blocks_per_sm <= 64:
            raise RunnerError("CanaryConfigInvalid", f"blocks_per_sm must be 1..64, got {self.blocks_per_sm}")
        self.blocks = self.sms * self.blocks_per_sm
        self.ctx = check(drv, drv.cuDevicePrimaryCtxRetain(self.device), f"context on device {self.ordinal}")
        check(drv, drv.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        ptx = compile_tc_ptx(self.nvrtc, f"compute_{major}{minor}")
        self.module = check(drv, drv.cuModuleLoadData(ptx), "cuModuleLoadData(tensor-core canary)")
        self.fn = check(drv, drv.cuModuleGetFunction(self.module, b"tc_canary"), "tc_canary function")
        self.stream = check(drv, drv.cuStreamCreate(0), "cuStreamCreate")
        b = self.blocks
        self.sizes = {
            "a8": b * sdc.M * sdc.K8,
            "bt8": b * sdc.N * sdc.K8,
            "a16": b * sdc.M * sdc.K16 * 2,
            "bt16": b * sdc.N * sdc.K16 * 2,
            "c8": b * sdc.M * sdc.N * 4,
            "c16": b * sdc.M * sdc.N * 4,
            "smid": b * 4,
        }
        self.ptr: dict[str, Any] = {}
        for key, nbytes in self.sizes.items():
            self.ptr[key] = check(drv, drv.cuMemAlloc(nbytes), f"cuMemAlloc({key}, {nbytes} bytes)")
        # Pinned host buffers would be faster; pageable copies keep the footprint small.
        self.h_c8 = np.empty((b, sdc.M, sdc.N), np.int32)
        self.h_c16 = np.empty((b, sdc.M, sdc.N), np.uint32)
        self.h_smid = np.empty(b, np.uint32)

    def launch(
        self, inp: sdc.LaunchInputs, injection: sdc.Injection | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        drv = self.driver
        if inp.blocks != self.blocks:
            raise RunnerError("CanaryConfigInvalid", f"{inp.blocks} blocks given, {self.blocks} allocated")
        check(drv, drv.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")
        s = self.stream
        for key, arr in (("a8", inp.a8), ("bt8", inp.bt8), ("a16", inp.a16), ("bt16", inp.bt16)):
            a = np.ascontiguousarray(arr)
            check(drv, drv.cuMemcpyHtoDAsync(self.ptr[key], a.ctypes.data, a.nbytes, s), f"copy {key}")
        check(drv, drv.cuMemsetD32Async(self.ptr["smid"], sdc.NO_SM, self.blocks, s), "clear smid")
        inj_sm = -1 if injection is None else injection.sm
        inj_mask = 0 if injection is None else 1 << injection.bit
        inj_path = 0 if injection is None else sdc.PATHS.index(injection.path)
        argv = [
            np.array([int(self.ptr[k])], np.uint64) for k in ("a8", "bt8", "a16", "bt16", "c8", "c16", "smid")
        ] + [np.array([inj_sm], np.int32), np.array([inj_mask], np.uint32), np.array([inj_path], np.int32)]
        ptrs = np.array([a.ctypes.data for a in argv], dtype=np.uint64)
        check(
            drv,
            drv.cuLaunchKernel(self.fn, self.blocks, 1, 1, 32, 1, 1, 0, s, ptrs.ctypes.data, 0),
            "cuLaunchKernel(tc_canary)",
        )
        for key, host in (("c8", self.h_c8), ("c16", self.h_c16), ("smid", self.h_smid)):
            check(drv, drv.cuMemcpyDtoHAsync(host.ctypes.data, self.ptr[key], host.nbytes, s), f"copy {key}")
        check(drv, drv.cuStreamSynchronize(s), f"stream sync on device {self.ordinal}")
        return self.h_c8.copy(), self.h_c16.copy(), self.h_smid.copy()

    def close(self) -> None:
        drv = self.driver
        drv.cuCtxSetCurrent(self.ctx)  # best effort: after a sticky error every call fails
        for p in self.ptr.values():
            drv.cuMemFree(p)
        drv.cuStreamDestroy(self.stream)
        drv.cuModuleUnload(self.module)
        drv.cuDevicePrimaryCtxRelease(self.device)


class TensorCoreRunner:
    """The tensor-core canary on the configured devices (see the module docstring)."""

    name = "tensor-core"

    def __init__(
        self,
        devices: tuple[int, ...] = (),
        *,
        blocks_per_sm: int = DEFAULT_BLOCKS_PER_SM,
        allow_injection: bool = False,
        simulated: tuple[SimulatedTensorCoreDevice, ...] = (),
        base_seed: int | None = None,
    ) -> None:
        self.wanted = devices
        self.blocks_per_sm = blocks_per_sm
        self.allow_injection = allow_injection
        self._simulated = simulated
        self.devs: list[TensorCoreDevice] = []
        self.base_seed = base_seed if base_seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
        self.round = 0
        self.last_gen_s = 0.0  # host time drawing the last round's inputs
        self.last_device_s = 0.0  # copies + launches + sync of the last device's last round

    def load(self) -> LoadInfo:
        if self.allow_injection and os.environ.get(INJECTION_ENV) != "1":
            raise RunnerError(
                "CanaryConfigInvalid",
                f"tensor-core fault injection is enabled in config but {INJECTION_ENV}=1 is not "
                "set in the worker's environment: refused",
            )
        if self._simulated:
            self.devs = list(self._simulated)
            kind = "numpy model of the tensor-core kernel (simulation)"
        else:
            self.devs = list(self._load_cuda())
            kind = "NVRTC tensor-core canary (int8 m16n8k32 + bf16 m16n8k16 mma.sync; no wgmma)"
        names = ", ".join(f"{d.ordinal}:{d.uuid} ({d.sms} SMs)" for d in self.devs)
        return LoadInfo(
            detail=f"{kind} on {names}",
            uses_gpu=not self._simulated,
            labels={"devices": ",".join(str(d.ordinal) for d in self.devs)},
        )

    def _load_cuda(self) -> list[TensorCoreDevice]:
        driver, nvrtc, ordinals = open_cuda(self.wanted)
        return [CudaTensorCoreDevice(o, self.blocks_per_sm, driver, nvrtc) for o in ordinals]

    def injection(self, gpu_fault: str) -> sdc.Injection | None:
        """The injected fault named by ``gpu_fault``, if any; refused unless enabled twice."""
        if not gpu_fault.startswith("sdc_flip"):
            return None
        if not self.allow_injection or os.environ.get(INJECTION_ENV) != "1":
            raise RunnerError(
                "FaultInjectionRefused",
                "tensor-core fault injection needs canary.tensor_core.allow_fault_injection: true "
                f"and {INJECTION_ENV}=1",
            )
        try:
            return sdc.Injection.parse(gpu_fault)
        except ValueError as exc:
            raise RunnerError("FaultInjectionRefused", str(exc)) from exc

    def infer(self, *, gpu_fault: str = "none") -> dict[str, np.ndarray]:
        if not self.devs:
            raise RunnerError("RunnerNotLoaded", "infer before load")
        injection = self.injection(gpu_fault)
        self.round += 1
        out: dict[str, np.ndarray] = {}
        for d in self.devs:
            out.update(self.round_on(d, injection))
        return out

    def round_on(self, d: TensorCoreDevice, injection: sdc.Injection | None) -> dict[str, np.ndarray]:
        """One round on one device: launch until every SM ran a block (or MAX_LAUNCHES)."""
        if isinstance(d, SimulatedTensorCoreDevice):
            d.new_round()
        blocks = d.blocks
        launches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        seen: set[int] = set()
        gen_s = device_s = 0.0
        for launch in range(sdc.MAX_LAUNCHES):
            t0 = time.perf_counter()
            inp = sdc.launch_inputs(self.base_seed, self.round, launch, blocks)
            t1 = time.perf_counter()
            res = d.launch(inp, injection)
            gen_s += t1 - t0
            device_s += time.perf_counter() - t1
            launches.append(res)
            seen.update(int(x) for x in np.unique(res[2]))
            if len(seen - {sdc.NO_SM}) >= d.sms:
                break
        meta = sdc.RoundMeta(self.base_seed, self.round, len(launches), d.sms, blocks, injection)
        self.last_gen_s, self.last_device_s = gen_s, device_s
        return sdc.pack_outputs(d.ordinal, meta, d.uuid, launches, (gen_s, device_s))

    def close(self) -> None:
        for d in self.devs:
            d.close()
        self.devs = []
