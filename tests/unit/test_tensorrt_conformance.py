"""The TensorRT runner's API surface exists on the real ``tensorrt_lean`` 11.4 classes.

Only classes are inspected, and Python subclasses of ILogger / IErrorRecorder are built: no
``Runtime`` is ever created (on a machine without a GPU that segfaults).
"""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from sidecar.canary.worker.runners.tensorrt_module import TRT_MODULES, make_logger, make_recorder
from sidecar.canary.worker.runners.tensorrt_runner import TRT_API


def _lean() -> ModuleType:
    for name in ("tensorrt_lean_bindings", "tensorrt_lean", "tensorrt"):
        try:
            return importlib.import_module(name)
        except Exception:
            continue
    pytest.skip("no TensorRT module importable (pip install tensorrt-lean-cu13-bindings)")


@pytest.fixture(scope="module")
def trt() -> ModuleType:
    return _lean()


def test_module_order_prefers_full_then_lean() -> None:
    """Modules are tried full first, then the lean metapackage name, then the bindings name."""
    assert TRT_MODULES == ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")


@pytest.mark.parametrize(("cls", "attrs"), TRT_API, ids=[c for c, _ in TRT_API])
def test_used_attributes_exist(trt: ModuleType, cls: str, attrs: tuple[str, ...]) -> None:
    """Every attribute in the runner's TRT_API list exists on the real class or enum."""
    klass = getattr(trt, cls, None)
    assert klass is not None, f"{trt.__name__}.{cls} missing"
    missing = [a for a in attrs if not hasattr(klass, a)]
    assert not missing, f"{trt.__name__}.{cls} lacks {missing}"


def test_removed_apis_are_not_used() -> None:
    """APIs removed in TensorRT 10/11 are absent from the runner's list and source."""
    from sidecar.canary.worker.runners import tensorrt_runner

    src = open(tensorrt_runner.__file__, encoding="utf-8").read()
    for gone in (
        "execute_async_v2",
        "get_binding_index",
        "binding_is_input",
        "device_memory_size)",
        "IStreamReader)",
        "max_batch_size",
    ):
        assert gone not in src, gone


def test_version_is_11(trt: ModuleType) -> None:
    """The installed lean runtime is the 11.x line the runner targets."""
    assert str(trt.__version__).split(".")[0] in ("10", "11")


def test_logger_subclass_captures(trt: ModuleType) -> None:
    """The capturing ILogger subclass builds and keeps severities by name."""
    logger = make_logger(trt)
    logger.log(trt.ILogger.Severity.ERROR, "Serialization assertion failed")
    logger.log(trt.ILogger.Severity.INFO, "fine")
    assert logger.errors() == ["Serialization assertion failed"]


def test_error_recorder_through_binding(trt: ModuleType) -> None:
    """The recorder answers TensorRT's own num_errors binding (via get_num_errors)."""
    rec = make_recorder(trt)
    rec.report_error(trt.ErrorCodeTRT.INTERNAL_ERROR, "boom")
    assert trt.IErrorRecorder.num_errors(rec) == 1
    assert rec.get_error_desc(0) == "boom"
    assert "INTERNAL_ERROR: boom" in rec.texts()[0]
    rec.clear()
    assert rec.num_errors() == 0


def test_every_attribute_the_runner_touches_is_listed() -> None:
    """Scanning the runner's source: each engine / context / runtime / trt.X.Y access is in
    TRT_API, so the conformance list cannot drift from the code."""
    import re

    from sidecar.canary.worker.runners import tensorrt_runner

    src = open(tensorrt_runner.__file__, encoding="utf-8").read()
    listed = {cls: set(attrs) for cls, attrs in TRT_API}
    receivers = {
        r"(?<![.\w])(?:engine|self\._engine)\.(\w+)": "ICudaEngine",
        r"\b(?:ctx|self\._context)\.(\w+)": "IExecutionContext",
        r"\bself\._runtime\.(\w+)": "Runtime",
    }
    unlisted = []
    for pattern, cls in receivers.items():
        for attr in set(re.findall(pattern, src)):
            if attr not in listed[cls]:
                unlisted.append(f"{cls}.{attr}")
    for cls, attr in set(re.findall(r"\btrt\.(\w+)\.(\w+)", src)):
        if cls in listed and attr not in listed[cls] and attr != "__init__":
            unlisted.append(f"{cls}.{attr}")
    for cls in set(re.findall(r"\btrt\.([A-Z]\w+)", src)):
        if cls not in listed and cls not in ("ILogger", "IErrorRecorder"):
            unlisted.append(cls)
    assert not unlisted, f"used but not in TRT_API: {sorted(unlisted)}"
