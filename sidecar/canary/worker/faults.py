"""Faults the worker commits on purpose, in simulation only (``--allow-faults``): a real crash,
a real hang, a real leak before the canary, and wrong or subtly drifted outputs after it."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from sidecar.canary.protocol import FaultSpec
from sidecar.canary.worker.memory import MIB


def before_run(fault: FaultSpec, leaked: list[np.ndarray]) -> None:
    """The faults that happen before the canary runs (``crash``, ``hang``, ``leak``)."""
    if fault.mode == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)  # a real segfault-like death
        time.sleep(5)  # in case the signal is handled: never answer
        os.abort()
    elif fault.mode == "hang":
        while True:  # a real hang: only SIGKILL ends it
            time.sleep(3600)
    elif fault.mode == "leak":
        chunk = np.ones(max(1, int(fault.leak_mib * MIB)), dtype=np.uint8)  # touched pages
        leaked.append(chunk)


def on_outputs(fault: FaultSpec | None, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs as the fault makes them (``wrong``: visibly off; ``drift``: one low bit)."""
    if fault is not None and fault.mode == "wrong":
        return {k: perturb(v) for k, v in outputs.items()}
    if fault is not None and fault.mode == "drift":
        return {k: flip_lowest_bit(v) for k, v in outputs.items()}
    return outputs


def perturb(arr: np.ndarray) -> np.ndarray:
    """A plausible silent corruption: one element off by a visible amount."""
    out = np.array(arr, copy=True)
    if out.size:
        flat = out.reshape(-1)
        flat[0] = flat[0] + (abs(flat[0]) * 0.5 + 1)
    return out


def flip_lowest_bit(arr: np.ndarray) -> np.ndarray:
    """A corruption the golden's tolerance cannot see: the lowest bit of one element flipped
    (the exact digest changes, the comparison within tolerance passes): what replica
    consistency (docs/trends.md) exists to catch."""
    out = np.array(arr, copy=True)
    if out.size and out.dtype.itemsize in (1, 2, 4, 8):
        view = out.reshape(-1).view(np.dtype(f"u{out.dtype.itemsize}"))
        view[0] ^= 1
    return out
