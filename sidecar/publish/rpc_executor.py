"""The gRPC server's RPC thread pool: Watch registrations run apart from Check/List."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class RpcExecutor(ThreadPoolExecutor):
    """The RPC thread pool of the grpc server: Watch registrations run apart from Check/List.

    grpcio's sync server hands every call to one executor in arrival order. Under a burst of
    thousands of Watch calls (each registered or refused in some tens of microseconds) one
    FIFO pool puts a kubelet probe's Check behind all of them, and eight threads busy with
    them contend for the GIL with the thread that answers it. Tasks whose behaviour is
    ``background`` (the Watch handler, which never blocks) go to their own pool of
    ``background_threads``; everything else keeps the ``max_workers`` threads to itself."""

    def __init__(
        self, max_workers: int, *, thread_name_prefix: str = "grpc-rpc", background_threads: int = 2
    ) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix=thread_name_prefix)
        self.background: object = object()  # matches nothing until set
        self._background_pool = ThreadPoolExecutor(
            max_workers=background_threads, thread_name_prefix=f"{thread_name_prefix}-watch"
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # grpcio passes the method's behaviour among the arguments of its ``*_in_pool`` task
        if self.background in args:
            return self._background_pool.submit(fn, *args, **kwargs)
        return super().submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._background_pool.shutdown(wait=wait, cancel_futures=cancel_futures)
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
