"""RpcExecutor: the gRPC server's pool runs Check/List before queued Watch registrations."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sidecar.publish.grpc_health import RpcExecutor


def watch_behavior(*_: Any) -> None:  # stands for the Watch handler passed to the pool
    pass


def test_urgent_task_overtakes_queued_background_tasks() -> None:
    pool = RpcExecutor(1)
    pool.background = (watch_behavior,)
    gate = threading.Event()
    order: list[str] = []
    started = threading.Event()

    def blocker(_: Any) -> None:
        started.set()
        gate.wait(10)

    def task(name: str, _: Any) -> str:
        order.append(name)
        return name

    first = pool.submit(blocker, watch_behavior)
    assert started.wait(10)  # the only worker is busy
    later = [pool.submit(task, f"watch-{i}", watch_behavior) for i in range(5)]
    check = pool.submit(task, "check", None)
    gate.set()
    assert check.result(10) == "check"
    for f in later:
        f.result(10)
    first.result(10)
    assert order == ["check"] + [f"watch-{i}" for i in range(5)]
    pool.shutdown()


def test_results_exceptions_and_shutdown() -> None:
    pool = RpcExecutor(2)

    def boom() -> None:
        raise ValueError("x")

    assert pool.submit(lambda a, b: a + b, 1, 2).result(10) == 3
    assert pool.submit(lambda *, k: k, k=4).result(10) == 4
    with pytest.raises(ValueError):
        pool.submit(boom).result(10)
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        pool.submit(boom)


def test_threads_start_on_demand_up_to_the_limit() -> None:
    pool = RpcExecutor(3, thread_name_prefix="t-rpc")
    gate = threading.Event()
    n = 10
    running = threading.Semaphore(0)

    def hold() -> str:
        running.release()
        gate.wait(10)
        return threading.current_thread().name

    futs = [pool.submit(hold) for _ in range(n)]
    for _ in range(3):
        assert running.acquire(timeout=10)
    gate.set()
    names = {f.result(10) for f in futs}
    assert names <= {"t-rpc_0", "t-rpc_1", "t-rpc_2"}
    pool.shutdown()
