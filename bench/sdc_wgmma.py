"""Experimental (bench only, not in the screen): a Hopper ``wgmma`` bf16 canary kernel.

One warpgroup (128 threads) per block multiplies A (64 x 16 bf16) by B (16 x 8) with
``wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16``, both operands in shared memory in the
no-swizzle core-matrix layout (8 rows x 16 bytes per core matrix; K-adjacent core matrices 128
bytes apart, M-adjacent 256 bytes apart). Which descriptor field (leading or stride byte
offset) carries the K-direction step is tried both ways; the bench reports which variant gives
the exact golden, so a later change can put the right one into the production screen. Nothing
here can raise a false alarm in production: it is never loaded by the sidecar.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sidecar.canary import sdc
from sidecar.canary.worker.runners.cuda_kernel import check

WG_SOURCE = rb"""
__device__ __forceinline__ unsigned long long wg_desc(const void* p, int lbo, int sbo) {
    unsigned addr = (unsigned)__cvta_generic_to_shared(p);
    unsigned long long d = 0;
    d |= (unsigned long long)((addr >> 4) & 0x3FFF);
    d |= (unsigned long long)((lbo >> 4) & 0x3FFF) << 16;
    d |= (unsigned long long)((sbo >> 4) & 0x3FFF) << 32;
    return d; /* base offset 0, no swizzle */
}

extern "C" __global__ void __launch_bounds__(128) wg_canary(
    const unsigned short* __restrict__ a, const unsigned short* __restrict__ bt,
    float* __restrict__ c, unsigned* __restrict__ smid,
    int a_lbo, int a_sbo, int b_lbo, int b_sbo)
{
    /* Padded to 4 KB each and zeroed: a descriptor read the wrong way stays inside shared
       memory (a wrong answer to report, not an illegal address). */
    __shared__ __align__(256) unsigned short sA[2048];
    __shared__ __align__(256) unsigned short sB[2048];
    const int blk = blockIdx.x, tid = threadIdx.x;
    const unsigned short* A = a + blk * 64 * 16;
    const unsigned short* B = bt + blk * 8 * 16;
    for (int i = tid; i < 2048; i += 128) { sA[i] = 0; sB[i] = 0; }
    __syncthreads();
    for (int i = tid; i < 64 * 16; i += 128) {
        int m = i / 16, k = i % 16;
        sA[((m / 8) * 2 + (k / 8)) * 64 + (m % 8) * 8 + (k % 8)] = A[i];
    }
    for (int i = tid; i < 8 * 16; i += 128) {
        int n = i / 16, k = i % 16;
        sB[(k / 8) * 64 + n * 8 + (k % 8)] = B[i];
    }
    __syncthreads();
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    unsigned long long da = wg_desc(sA, a_lbo, a_sbo);
    unsigned long long db = wg_desc(sB, b_lbo, b_sbo);
    float d0 = 0.f, d1 = 0.f, d2 = 0.f, d3 = 0.f;
    int sd = 0;
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %6, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3}, %4, %5, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3)
        : "l"(da), "l"(db), "r"(sd));
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    const int w = tid / 32, lane = tid % 32, g = lane >> 2, t = lane & 3;
    float* C = c + blk * 64 * 8;
    C[(16 * w + g) * 8 + 2 * t] = d0;
    C[(16 * w + g) * 8 + 2 * t + 1] = d1;
    C[(16 * w + g + 8) * 8 + 2 * t] = d2;
    C[(16 * w + g + 8) * 8 + 2 * t + 1] = d3;
    unsigned sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    if (tid == 0) smid[blk] = sm;
}
"""

# (a_lbo, a_sbo, b_lbo, b_sbo): K-direction step in the leading field, or in the stride field
VARIANTS = {"k_step_in_lbo": (128, 256, 128, 256), "k_step_in_sbo": (256, 128, 256, 128)}


def compile_wgmma(nvrtc: Any) -> tuple[bytes | None, str]:
    prog = nvrtc.nvrtcCreateProgram(WG_SOURCE, b"wg_canary.cu", 0, [], [])[1]
    try:
        opts = [b"--gpu-architecture=compute_90a"]
        err = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)[0]
        size = nvrtc.nvrtcGetProgramLogSize(prog)[1]
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.decode(errors="replace").strip("\x00 ")[:1000]
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return None, log
        size = nvrtc.nvrtcGetPTXSize(prog)[1]
        ptx = b" " * size
        nvrtc.nvrtcGetPTX(prog, ptx)
        return bytes(ptx), log
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def run_isolated(ordinal: int, sms: int, timeout_s: float = 90.0) -> dict[str, Any]:
    """Each variant in its own process: a fault (sticky CUDA error) in one cannot hide the
    other's answer."""
    import json
    import subprocess
    import sys

    out: dict[str, Any] = {"screened": False}
    for name in VARIANTS:
        code = (
            "import json, sys; from bench.sdc_wgmma import run_wgmma; "
            f"print('RESULT ' + json.dumps(run_wgmma({ordinal}, {sms}, variants=({name!r},))))"
        )
        try:
            p = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            out[name] = {"error": f"timed out after {timeout_s:g}s"}
            continue
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            out[name] = {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-600:]}"}
            continue
        res = json.loads(line[len("RESULT ") :])
        out["nvrtc_builds_wgmma"] = res.get("nvrtc_builds_wgmma")
        out[name] = res.get(name, res)
    return out


def run_wgmma(
    ordinal: int, sms: int, rounds: int = 20, blocks_per_sm: int = 4, variants: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Build, run the variants ``rounds`` times on fresh inputs, compare with the golden."""
    from cuda.bindings import driver as drv
    from cuda.bindings import nvrtc

    ptx, log = compile_wgmma(nvrtc)
    out: dict[str, Any] = {"nvrtc_builds_wgmma": ptx is not None, "nvrtc_log": log, "screened": False}
    if ptx is None:
        return out
    check(drv, drv.cuInit(0), "cuInit")
    dev = check(drv, drv.cuDeviceGet(ordinal), "cuDeviceGet")
    ctx = check(drv, drv.cuDevicePrimaryCtxRetain(dev), "primary context")
    check(drv, drv.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    mod = check(drv, drv.cuModuleLoadData(ptx), "cuModuleLoadData(wgmma)")
    fn = check(drv, drv.cuModuleGetFunction(mod, b"wg_canary"), "wg_canary")
    stream = check(drv, drv.cuStreamCreate(0), "stream")
    blocks = sms * blocks_per_sm
    sizes = {"a": blocks * 64 * 16 * 2, "b": blocks * 8 * 16 * 2, "c": blocks * 64 * 8 * 4, "s": blocks * 4}
    ptr = {k: check(drv, drv.cuMemAlloc(v), f"alloc {k}") for k, v in sizes.items()}
    h_c = np.empty((blocks, 64, 8), np.float32)
    h_s = np.empty(blocks, np.uint32)
    rng = np.random.default_rng(90)
    try:
        for name, (albo, asbo, blbo, bsbo) in VARIANTS.items():
            if variants and name not in variants:
                continue
            exact = 0
            covered: list[int] = []
            first_diff = ""
            for _ in range(rounds):
                a = sdc.to_bf16_bits(_nonzero(rng, (blocks, 64, 16)))
                b = sdc.to_bf16_bits(_nonzero(rng, (blocks, 8, 16)))
                check(drv, drv.cuMemcpyHtoDAsync(ptr["a"], a.ctypes.data, a.nbytes, stream), "copy a")
                check(drv, drv.cuMemcpyHtoDAsync(ptr["b"], b.ctypes.data, b.nbytes, stream), "copy b")
                check(drv, drv.cuMemsetD32Async(ptr["s"], sdc.NO_SM, blocks, stream), "clear smid")
                argv = [np.array([int(ptr[k])], np.uint64) for k in ("a", "b", "c", "s")] + [
                    np.array([v], np.int32) for v in (albo, asbo, blbo, bsbo)
                ]
                pp = np.array([x.ctypes.data for x in argv], np.uint64)
                check(
                    drv,
                    drv.cuLaunchKernel(fn, blocks, 1, 1, 128, 1, 1, 0, stream, pp.ctypes.data, 0),
                    "launch",
                )
                check(drv, drv.cuMemcpyDtoHAsync(h_c.ctypes.data, ptr["c"], h_c.nbytes, stream), "copy c")
                check(drv, drv.cuMemcpyDtoHAsync(h_s.ctypes.data, ptr["s"], h_s.nbytes, stream), "copy s")
                check(drv, drv.cuStreamSynchronize(stream), "sync")
                ref = np.einsum(
                    "bmk,bnk->bmn",
                    sdc.from_bf16_bits(a).astype(np.int64),
                    sdc.from_bf16_bits(b).astype(np.int64),
                ).astype(np.float32)
                same = h_c.view(np.uint32) == ref.view(np.uint32)
                exact += int(same.all())
                covered.append(len(np.unique(h_s)))
                if not same.all() and not first_diff:
                    bi, r, col = (int(x) for x in np.argwhere(~same)[0])
                    first_diff = f"block {bi} C[{r},{col}] got {h_c[bi, r, col]} expected {ref[bi, r, col]}"
            out[name] = {
                "rounds": rounds,
                "bit_exact_rounds": exact,
                "coverage_min": min(covered),
                "first_difference": first_diff,
            }
    finally:
        for p in ptr.values():
            drv.cuMemFree(p)
        drv.cuStreamDestroy(stream)
        drv.cuModuleUnload(mod)
        drv.cuDevicePrimaryCtxRelease(dev)
    return out


def _nonzero(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.integers(-8, 8, size=shape, dtype=np.int8)
    v += (v >= 0).astype(np.int8)
    return v
