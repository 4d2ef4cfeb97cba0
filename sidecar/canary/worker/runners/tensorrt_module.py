"""The TensorRT module and the objects TensorRT calls back into: the first importable module of
``tensorrt``, ``tensorrt_lean``, ``tensorrt_lean_bindings`` (the lean wheel's real name), a
capturing ``ILogger`` and an ``IErrorRecorder`` whose messages become the runner's reasons.

The attributes used here are listed in
:data:`sidecar.canary.worker.runners.tensorrt_runner.TRT_API` (``ILogger``, ``IErrorRecorder``)
with the rest of the runner's TensorRT surface.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from sidecar.canary.worker.runners.base import RunnerUnavailable

TRT_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")


def import_tensorrt() -> ModuleType:
    """The first importable TensorRT module. Raises :class:`RunnerUnavailable`."""
    problems = []
    for name in TRT_MODULES:
        try:
            return importlib.import_module(name)
        except Exception as exc:  # a broken install raises more than ImportError
            problems.append(f"{name}: {exc}")
    raise RunnerUnavailable("RunnerUnavailable", "no TensorRT module: " + "; ".join(problems))


def make_logger(trt: ModuleType) -> Any:
    """An ``ILogger`` that keeps every message (severity name, text)."""

    class CaptureLogger(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # required for the pybind trampoline
            self.records: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.records.append((getattr(severity, "name", str(severity)), msg))
            del self.records[:-200]  # bounded: a long-lived worker must not grow

        def errors(self) -> list[str]:
            return [m for s, m in self.records if s in ("INTERNAL_ERROR", "ERROR")]

    return CaptureLogger()


def make_recorder(trt: ModuleType) -> Any:
    """An ``IErrorRecorder``. TensorRT's C++ side calls ``get_num_errors``; Python callers use
    ``num_errors``: both are defined (reference/tensorrt-anchors.md, section 0)."""

    class Recorder(trt.IErrorRecorder):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IErrorRecorder.__init__(self)
            self.errors: list[tuple[Any, str]] = []

        def report_error(self, code: Any, desc: str) -> bool:
            self.errors.append((code, desc))
            del self.errors[:-100]
            return False  # not fatal from our side: TensorRT decides

        def get_num_errors(self) -> int:
            return len(self.errors)

        num_errors = get_num_errors

        def get_error_code(self, index: int) -> Any:
            return self.errors[index][0]

        def get_error_desc(self, index: int) -> str:
            return self.errors[index][1]

        def has_overflowed(self) -> bool:
            return False

        def clear(self) -> None:
            self.errors.clear()

        def texts(self) -> list[str]:
            return [f"{getattr(c, 'name', c)}: {d}" for c, d in self.errors]

    return Recorder()
