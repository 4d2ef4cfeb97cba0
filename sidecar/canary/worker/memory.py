"""What the worker process holds: its resident set (``/proc``) and its GPU memory (NVML, when
present). Reported in every reply so the supervisor can see a leak or memory pressure."""

from __future__ import annotations

import os
from typing import Any

MIB = 1 << 20


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
                    f"GPU {i}: {m.free / MIB:.0f} MiB free of {m.total / MIB:.0f} MiB "
                    f"({m.used / MIB:.0f} MiB used)"
                )
            return "; ".join(parts)
        except Exception:
            return ""
