"""Tensor-core silent-data-corruption screen: layout, inputs, golden, judge. Pure numpy.

Used on both sides of the worker pipe: the tensor-core runner (worker process) draws the
inputs of a round from ``(base_seed, round, launch)`` and launches the kernel; the serving
process draws the *same* inputs from the seed the worker reports, computes the golden in
integer arithmetic (numpy int64) and compares bit for bit. Nothing here touches CUDA.

Layout of one launch (one warp per block, ``blocks = SMs x blocks_per_sm``); block ``b``:

- int8 path: ``A8[b]`` (16 x 64, row-major) times ``B8[b]`` (64 x 8, stored transposed as
  ``Bt8[b]`` 8 x 64) with two chained ``mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32``
  (k 0..31, then 32..63 accumulating into the first result) -> ``C8[b]`` 16 x 8 int32;
- bf16 path: ``A16[b]`` (16 x 32) times ``Bt16[b]`` (8 x 32) with two chained
  ``mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`` -> ``C16[b]`` 16 x 8 float32.
  Inputs are the integers -8..-1, 1..8 (exact in bf16); every partial sum is an integer of
  magnitude <= 2048, exact in float32, so the answer is exact whatever the summation order;
- ``smid[b]``: the SM the block ran on (``%smid``); ``0xFFFFFFFF`` if the block never ran.

Inputs are never zero (no element is 0) and never repeat: the round counter is part of the
seed. The numpy model of the kernel itself (fragment loads per lane, the MMA, the stores, the
injected bit flip) is worker-side: :mod:`sidecar.canary.worker.sdc_model`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

INJECTION_ENV = "TRT_HEALTH_SDC_FAULT_INJECTION"  # test-only fault injection, second switch
M, N = 16, 8
K8 = 64  # two m16n8k32 steps
K16 = 32  # two m16n8k16 steps
WARP = 32
NO_SM = 0xFFFFFFFF
PATHS = ("int8", "bf16")
MAX_LAUNCHES = 4  # one round: the first launch plus up to 3 extra when an SM was skipped
MAX_SM_ID = 4096  # far above any GPU's %nsmid; beyond it an SM id is garbage
MAX_REPORTED = 8  # mismatching elements named in one message (the count is always given)

# Output names (per device ``name@<ordinal>``); see :func:`pack_outputs`.
OUT_I8 = "sdc_c8"
OUT_BF16 = "sdc_c16"
OUT_SMID = "sdc_smid"
OUT_META = "sdc_meta"
OUT_UUID = "sdc_uuid"
OUT_TIME = "sdc_time"  # float64 [input generation s, device round trip s] of the round

# sdc_meta fields (uint64): base seed, round number, launches, SM count, blocks per launch,
# injected SM (+1; 0 = none), injected bit, injected path index.
META_LEN = 8


@dataclass(frozen=True, slots=True)
class LaunchInputs:
    """The inputs of one launch, as the kernel reads them."""

    a8: np.ndarray  # (blocks, 16, 64) int8
    bt8: np.ndarray  # (blocks, 8, 64) int8
    a16: np.ndarray  # (blocks, 16, 32) uint16 (bf16 bits)
    bt16: np.ndarray  # (blocks, 8, 32) uint16 (bf16 bits)

    @property
    def blocks(self) -> int:
        return int(self.a8.shape[0])


@dataclass(frozen=True, slots=True)
class Injection:
    """Test-only: flip ``bit`` of element C[0, 0] of ``path`` in every block on SM ``sm``."""

    sm: int
    bit: int
    path: str = "int8"

    def __post_init__(self) -> None:
        if self.sm < 0 or not 0 <= self.bit < 32 or self.path not in PATHS:
            raise ValueError(f"bad injection sm={self.sm} bit={self.bit} path={self.path!r}")

    @classmethod
    def parse(cls, text: str) -> Injection:
        """``sdc_flip:<sm>:<bit>[:<path>]`` (the worker's ``gpu_fault`` string)."""
        parts = text.split(":")
        if len(parts) not in (3, 4) or parts[0] != "sdc_flip":
            raise ValueError(f"expected sdc_flip:<sm>:<bit>[:int8|bf16], got {text[:60]!r}")
        try:
            sm, bit = int(parts[1]), int(parts[2])
        except ValueError as exc:
            raise ValueError(f"sdc_flip: sm and bit must be integers, got {text[:60]!r}") from exc
        return cls(sm, bit, parts[3] if len(parts) == 4 else "int8")

    def text(self) -> str:
        return f"sdc_flip:{self.sm}:{self.bit}:{self.path}"


def _nonzero(rng: np.random.Generator, shape: tuple[int, ...], hi: int) -> np.ndarray:
    """Integers in -hi..-1, 1..hi (int8): never zero."""
    v = rng.integers(-hi, hi, size=shape, dtype=np.int8)
    v += (v >= 0).astype(np.int8)
    return v


def to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Small integers as bfloat16 bit patterns (exact: the top half of the float32)."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def launch_inputs(base_seed: int, round_no: int, launch: int, blocks: int) -> LaunchInputs:
    """Inputs of launch ``launch`` of round ``round_no``: a pure function of the seed."""
    if blocks <= 0:
        raise ValueError(f"blocks must be > 0, got {blocks}")
    rng = np.random.default_rng(np.random.SeedSequence([base_seed, round_no, launch]))
    return LaunchInputs(
        a8=_nonzero(rng, (blocks, M, K8), 127),
        bt8=_nonzero(rng, (blocks, N, K8), 127),
        a16=to_bf16_bits(_nonzero(rng, (blocks, M, K16), 8)),
        bt16=to_bf16_bits(_nonzero(rng, (blocks, N, K16), 8)),
    )


def golden(inp: LaunchInputs) -> tuple[np.ndarray, np.ndarray]:
    """(C8 int32, C16 as float32 bit patterns uint32), computed in int64 on the CPU."""
    c8 = np.einsum("bmk,bnk->bmn", inp.a8.astype(np.int64), inp.bt8.astype(np.int64))
    a16 = from_bf16_bits(inp.a16).astype(np.int64)
    b16 = from_bf16_bits(inp.bt16).astype(np.int64)
    c16 = np.einsum("bmk,bnk->bmn", a16, b16)
    return c8.astype(np.int32), c16.astype(np.float32).view(np.uint32)


# --- packing and judging ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoundMeta:
    base_seed: int
    round_no: int
    launches: int
    sms: int
    blocks: int
    injection: Injection | None = None

    def array(self) -> np.ndarray:
        inj = self.injection
        return np.array(
            [
                self.base_seed,
                self.round_no,
                self.launches,
                self.sms,
                self.blocks,
                0 if inj is None else inj.sm + 1,
                0 if inj is None else inj.bit,
                0 if inj is None else PATHS.index(inj.path),
            ],
            dtype=np.uint64,
        )

    @classmethod
    def from_array(cls, arr: np.ndarray) -> RoundMeta:
        v = [int(x) for x in np.asarray(arr, dtype=np.uint64).reshape(-1)]
        if len(v) != META_LEN:
            raise ValueError(f"{OUT_META} has {len(v)} fields, expected {META_LEN}")
        inj = Injection(v[5] - 1, v[6], PATHS[v[7]]) if v[5] else None
        return cls(v[0], v[1], v[2], v[3], v[4], inj)


def pack_outputs(
    ordinal: int,
    meta: RoundMeta,
    uuid: str,
    launches: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    timing: tuple[float, float] = (0.0, 0.0),
) -> dict[str, np.ndarray]:
    """One device's round as worker outputs (arrays only: they cross the pipe)."""
    return {
        f"{OUT_TIME}@{ordinal}": np.array(timing, np.float64),
        f"{OUT_I8}@{ordinal}": np.stack([x[0] for x in launches]).astype(np.int32),
        f"{OUT_BF16}@{ordinal}": np.stack([x[1] for x in launches]).astype(np.uint32),
        f"{OUT_SMID}@{ordinal}": np.stack([x[2] for x in launches]).astype(np.uint32),
        f"{OUT_META}@{ordinal}": meta.array(),
        f"{OUT_UUID}@{ordinal}": np.frombuffer(uuid.encode("ascii", "replace")[:64], np.uint8).copy(),
    }


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One element that differs from the golden."""

    path: str
    launch: int
    block: int
    sm: int
    row: int
    col: int
    got: int  # raw 32-bit pattern
    expected: int

    @property
    def xor(self) -> int:
        return (self.got ^ self.expected) & 0xFFFFFFFF

    def describe(self) -> str:
        return (
            f"SM {self.sm} block {self.block} (launch {self.launch}) {self.path} "
            f"C[{self.row},{self.col}]: got 0x{self.got:08x}, expected 0x{self.expected:08x}, "
            f"xor 0x{self.xor:08x}"
        )


@dataclass(slots=True)
class DeviceVerdict:
    """One device's round, judged."""

    ordinal: int
    uuid: str
    meta: RoundMeta
    covered: int  # distinct SMs that ran MMA work this round (all launches)
    missing_sms: list[int] = field(default_factory=list)
    mismatches: list[Mismatch] = field(default_factory=list)  # the first MAX_REPORTED
    mismatch_count: int = 0
    bad_sms: list[int] = field(default_factory=list)  # every SM with a differing element
    problem: str = ""  # malformed output (not SDC evidence: a worker/protocol fault)

    @property
    def corrupt(self) -> bool:
        return self.mismatch_count > 0

    def describe(self) -> str:
        if self.problem:
            return f"GPU {self.uuid} (device {self.ordinal}): {self.problem}"
        head = (
            f"GPU {self.uuid} (device {self.ordinal}) round {self.meta.round_no}: "
            f"{self.mismatch_count} tensor-core result element(s) differ from the CPU golden"
        )
        sms = ",".join(str(s) for s in self.bad_sms[:16]) + ("..." if len(self.bad_sms) > 16 else "")
        shown = "; ".join(m.describe() for m in self.mismatches)
        more = self.mismatch_count - len(self.mismatches)
        tail = f"; and {more} more" if more > 0 else ""
        if self.meta.injection is not None:  # never in production: say so plainly
            tail += f" [test fault injection was active: {self.meta.injection.text()}]"
        return f"{head} on SM(s) {sms}: {shown}{tail}"


def _devices(outputs: dict[str, np.ndarray]) -> list[int]:
    out: set[int] = set()
    for name in outputs:
        base, _, dev = name.partition("@")
        if base == OUT_META:
            try:
                out.add(int(dev))
            except ValueError:
                continue
    return sorted(out)


def judge_round(outputs: dict[str, np.ndarray], *, max_reported: int = MAX_REPORTED) -> list[DeviceVerdict]:
    """Recompute every launch's golden from the reported seed and compare bit for bit.

    A malformed round (missing arrays, wrong shapes, an SM id out of range, a block that never
    ran) is a ``problem``, never a pass: the caller fails closed without calling it SDC.
    """
    verdicts: list[DeviceVerdict] = []
    devices = _devices(outputs)
    if not devices:
        return [DeviceVerdict(0, "unknown", RoundMeta(0, 0, 0, 0, 0), 0, problem="no tensor-core outputs")]
    for d in devices:
        verdicts.append(_judge_device(outputs, d, max_reported))
    return verdicts


def _judge_device(outputs: dict[str, np.ndarray], d: int, max_reported: int) -> DeviceVerdict:
    raw_uuid = outputs.get(f"{OUT_UUID}@{d}")
    uuid = "unknown"
    if raw_uuid is not None:
        uuid = bytes(np.asarray(raw_uuid, np.uint8)).decode("ascii", "replace")
    try:
        meta = RoundMeta.from_array(outputs[f"{OUT_META}@{d}"])
    except (KeyError, ValueError, IndexError) as exc:
        return DeviceVerdict(d, uuid, RoundMeta(0, 0, 0, 0, 0), 0, problem=f"bad round metadata: {exc}")
    v = DeviceVerdict(d, uuid, meta, 0)
    c8 = outputs.get(f"{OUT_I8}@{d}")
    c16 = outputs.get(f"{OUT_BF16}@{d}")
    smid = outputs.get(f"{OUT_SMID}@{d}")
    shape = (meta.launches, meta.blocks, M, N)
    if not 1 <= meta.launches <= MAX_LAUNCHES or meta.blocks <= 0 or meta.sms <= 0:
        v.problem = f"bad round metadata: {meta.launches} launches, {meta.blocks} blocks, {meta.sms} SMs"
        return v
    if c8 is None or c16 is None or smid is None:
        v.problem = "tensor-core outputs missing"
        return v
    if c8.shape != shape or c16.shape != shape or smid.shape != shape[:2]:
        v.problem = f"tensor-core outputs have shapes {c8.shape}/{c16.shape}/{smid.shape}, expected {shape}"
        return v
    sm_ids = np.asarray(smid, np.uint32)
    if (sm_ids == NO_SM).any():
        v.problem = f"{int((sm_ids == NO_SM).sum())} block(s) never ran (no SM recorded)"
        return v
    # %smid numbering need not be contiguous (PTX ISA): ids may exceed the SM count, so
    # coverage is a count of distinct ids; only an absurd id is a malformed round.
    if (sm_ids >= MAX_SM_ID).any():
        v.problem = f"SM id {int(sm_ids.max())} out of range (GPU has {meta.sms} SMs)"
        return v
    seen = set(int(x) for x in np.unique(sm_ids))
    v.covered = len(seen)
    if v.covered < meta.sms and max(seen) < meta.sms:
        v.missing_sms = sorted(set(range(meta.sms)) - seen)
    got8 = np.asarray(c8, np.int32).view(np.uint32)
    got16 = np.asarray(c16, np.uint32)
    bad: set[int] = set()
    for launch in range(meta.launches):
        inp = launch_inputs(meta.base_seed, meta.round_no, launch, meta.blocks)
        exp8, exp16 = golden(inp)
        for path, got, exp in (("int8", got8[launch], exp8.view(np.uint32)), ("bf16", got16[launch], exp16)):
            diff = got != exp
            count = int(diff.sum())
            if not count:
                continue
            v.mismatch_count += count
            bad.update(int(x) for x in np.unique(sm_ids[launch][diff.any(axis=(1, 2))]))
            room = max_reported - len(v.mismatches)
            if room <= 0:
                continue
            for b, row, col in np.argwhere(diff)[:room]:
                v.mismatches.append(
                    Mismatch(
                        path,
                        launch,
                        int(b),
                        int(sm_ids[launch, b]),
                        int(row),
                        int(col),
                        int(got[b, row, col]),
                        int(exp[b, row, col]),
                    )
                )
    v.bad_sms = sorted(bad)
    return v
