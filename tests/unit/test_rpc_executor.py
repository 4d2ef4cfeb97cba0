"""RpcExecutor: the gRPC server's pool answers Check/List while Watch registrations queue."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sidecar.publish.rpc_executor import RpcExecutor


def watch_behavior(*_: Any) -> None:  # stands for the Watch handler that grpcio passes on
    pass


def test_check_is_answered_while_watch_registrations_are_queued() -> None:
    pool = RpcExecutor(1, background_threads=1)
    pool.background = watch_behavior
    gate = threading.Event()
    started = threading.Event()
    order: list[str] = []

    def blocker(_: Any) -> None:
        started.set()
        gate.wait(10)

    def task(name: str, _: Any) -> str:
        order.append(name)
        return name

    first = pool.submit(blocker, watch_behavior)
    assert started.wait(10)  # the Watch side is busy, more registrations queue behind
    later = [pool.submit(task, f"watch-{i}", watch_behavior) for i in range(5)]
    assert pool.submit(task, "check", None).result(10) == "check"
    assert order == ["check"]  # answered before any queued Watch registration
    gate.set()
    for f in later:
        f.result(10)
    first.result(10)
    assert order == ["check"] + [f"watch-{i}" for i in range(5)]
    pool.shutdown()


def test_results_exceptions_and_shutdown() -> None:
    pool = RpcExecutor(2)
    pool.background = watch_behavior

    def boom(*_: Any) -> None:
        raise ValueError("x")

    assert pool.submit(lambda a, b: a + b, 1, 2).result(10) == 3
    assert pool.submit(lambda *, k: k, k=4).result(10) == 4
    assert pool.submit(lambda a, _: a, 5, watch_behavior).result(10) == 5
    with pytest.raises(ValueError):
        pool.submit(boom).result(10)
    with pytest.raises(ValueError):
        pool.submit(boom, watch_behavior).result(10)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(boom)
    with pytest.raises(RuntimeError):
        pool.submit(boom, watch_behavior)
