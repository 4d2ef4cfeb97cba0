"""A numpy model of the tensor-core SDC kernel (the worker's simulated device; tests).

:func:`simulate_launch` mirrors the kernel lane by lane (PTX fragment layouts of both MMAs, the
stores, the injected bit flip), so CI exercises the same index arithmetic as ``KERNEL_SOURCE``;
:func:`fast_simulate_launch` is its vectorised equivalent, what the simulated device runs. The
layout, inputs and golden it computes with live in :mod:`sidecar.canary.sdc` (shared with the
serving side, which never imports this package).
"""

from __future__ import annotations

import numpy as np

from sidecar.canary.sdc import K8, K16, WARP, Injection, LaunchInputs, M, N, from_bf16_bits, golden


def _frag_a8(a: np.ndarray, lane: int, k0: int) -> list[np.ndarray]:
    """Lane's four A registers of m16n8k32 s8 (4 int8 each): rows g, g+8; cols 4t.., 4t+16.."""
    g, t = lane >> 2, lane & 3
    return [
        a[g, k0 + 4 * t : k0 + 4 * t + 4],
        a[g + 8, k0 + 4 * t : k0 + 4 * t + 4],
        a[g, k0 + 4 * t + 16 : k0 + 4 * t + 20],
        a[g + 8, k0 + 4 * t + 16 : k0 + 4 * t + 20],
    ]


def _frag_b8(bt: np.ndarray, lane: int, k0: int) -> list[np.ndarray]:
    g, t = lane >> 2, lane & 3
    return [bt[g, k0 + 4 * t : k0 + 4 * t + 4], bt[g, k0 + 4 * t + 16 : k0 + 4 * t + 20]]


def _frag_a16(a: np.ndarray, lane: int, k0: int) -> list[np.ndarray]:
    """Lane's four A registers of m16n8k16 bf16 (2 values each)."""
    g, t = lane >> 2, lane & 3
    return [
        a[g, k0 + 2 * t : k0 + 2 * t + 2],
        a[g + 8, k0 + 2 * t : k0 + 2 * t + 2],
        a[g, k0 + 2 * t + 8 : k0 + 2 * t + 10],
        a[g + 8, k0 + 2 * t + 8 : k0 + 2 * t + 10],
    ]


def _frag_b16(bt: np.ndarray, lane: int, k0: int) -> list[np.ndarray]:
    g, t = lane >> 2, lane & 3
    return [bt[g, k0 + 2 * t : k0 + 2 * t + 2], bt[g, k0 + 2 * t + 8 : k0 + 2 * t + 10]]


def _mma(a_regs: list[list[np.ndarray]], b_regs: list[list[np.ndarray]], k: int, per: int) -> np.ndarray:
    """PTX semantics of one warp MMA: rebuild A (16 x k) and B^T (8 x k) from the lanes'
    fragments (PTX ISA fragment layouts), multiply in int64."""
    a = np.zeros((M, k), np.int64)
    bt = np.zeros((N, k), np.int64)
    half = k // 2
    for lane in range(WARP):
        g, t = lane >> 2, lane & 3
        r = a_regs[lane]
        a[g, per * t : per * t + per] = r[0]
        a[g + 8, per * t : per * t + per] = r[1]
        a[g, half + per * t : half + per * t + per] = r[2]
        a[g + 8, half + per * t : half + per * t + per] = r[3]
        rb = b_regs[lane]
        bt[g, per * t : per * t + per] = rb[0]
        bt[g, half + per * t : half + per * t + per] = rb[1]
    return a @ bt.T


def _store(c: np.ndarray, lane: int) -> list[tuple[int, int]]:
    """(row, col) of the lane's four accumulator registers c0..c3."""
    g, t = lane >> 2, lane & 3
    return [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]


def simulate_launch(
    inp: LaunchInputs, placement: np.ndarray, injection: Injection | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the kernel writes, computed per lane as the kernel does (slow: tests only).

    ``placement[b]`` is the SM block ``b`` runs on (the scheduler's choice).
    """
    blocks = inp.blocks
    c8 = np.zeros((blocks, M, N), np.int32)
    c16 = np.zeros((blocks, M, N), np.uint32)
    a16v = from_bf16_bits(inp.a16).astype(np.int64)
    b16v = from_bf16_bits(inp.bt16).astype(np.int64)
    for b in range(blocks):
        acc8 = np.zeros((M, N), np.int64)
        for k0 in range(0, K8, 32):
            acc8 += _mma(
                [[x.astype(np.int64) for x in _frag_a8(inp.a8[b], lane, k0)] for lane in range(WARP)],
                [[x.astype(np.int64) for x in _frag_b8(inp.bt8[b], lane, k0)] for lane in range(WARP)],
                32,
                4,
            )
        acc16 = np.zeros((M, N), np.int64)
        for k0 in range(0, K16, 16):
            acc16 += _mma(
                [_frag_a16(a16v[b], lane, k0) for lane in range(WARP)],
                [_frag_b16(b16v[b], lane, k0) for lane in range(WARP)],
                16,
                2,
            )
        out8 = acc8.astype(np.int32)
        out16 = acc16.astype(np.float32).view(np.uint32)
        for lane in range(WARP):
            for i, (row, col) in enumerate(_store(out8, lane)):
                v8 = np.uint32(out8[row, col].view(np.uint32))
                v16 = np.uint32(out16[row, col])
                sm = int(placement[b])
                if injection is not None and lane == 0 and i == 0 and sm == injection.sm:
                    mask = np.uint32(1 << injection.bit)
                    if injection.path == "int8":
                        v8 ^= mask
                    else:
                        v16 ^= mask
                c8[b, row, col] = np.array(v8, np.uint32).view(np.int32)
                c16[b, row, col] = v16
    return c8, c16, placement.astype(np.uint32)


def fast_simulate_launch(
    inp: LaunchInputs, placement: np.ndarray, injection: Injection | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised equivalent of :func:`simulate_launch` (the simulated device of the worker)."""
    c8, c16 = golden(inp)
    smid = placement.astype(np.uint32)
    if injection is not None:
        hit = smid == np.uint32(injection.sm)
        mask = np.uint32(1 << injection.bit)
        if injection.path == "int8":
            v = c8.view(np.uint32)
            v[hit, 0, 0] ^= mask
        else:
            c16[hit, 0, 0] ^= mask
    return c8, c16, smid
