"""The small protocols every check and component implements.

A :class:`Check` is polled by the scheduler (interval + jitter, timeout, single-flight).
A :class:`Component` owns background machinery (an NVML event thread, a worker process,
file watchers) and hands its checks to the scheduler; event-driven findings go straight to
the :class:`ResultSink`, so they reach the health services within milliseconds instead of
waiting for the next poll.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeAlias, runtime_checkable

from sidecar.core.values import CheckResult, Condition, ServiceVerdict, Transition

Clock: TypeAlias = Callable[[], float]
"""Seconds from a monotonic clock (``time.monotonic``). Every component that measures time
takes one, so the rules that depend on time are tested by driving a clock, not by waiting.
Wall-clock stamps (Events, Diagnostics) take a separate ``wall`` clock (``time.time``)."""


@runtime_checkable
class Check(Protocol):
    """One polled check. ``run`` must not block the event loop: blocking calls (NVML, file
    hashing, pipes) go to a thread with ``asyncio.to_thread`` or are awaited natively."""

    name: str
    interval_s: float
    timeout_s: float

    async def run(self) -> Sequence[CheckResult]:
        """Observe once and return one result per condition this check owns."""
        ...

    def on_timeout(self, elapsed_s: float) -> Sequence[CheckResult]:
        """Results to record when a run exceeded its timeout (or is still in flight at the next
        tick). They are findings for this check's own conditions (readiness), never liveness."""
        ...


class ResultSink(Protocol):
    """Where results go. ``submit`` and ``trigger`` are safe to call from any thread."""

    def submit(self, results: Iterable[CheckResult]) -> None:
        """Record results now (event-driven path: Xid, scenario change, worker death)."""
        ...

    def trigger(self, check_name: str) -> None:
        """Ask the scheduler to run the named check as soon as possible (single-flight still
        applies: a run in flight is not doubled)."""
        ...


@runtime_checkable
class ConditionRetirer(Protocol):
    """A sink that can drop what a vanished source reported (a GPU that left the inventory).
    Safe to call from any thread."""

    def retire(self, prefixes: Sequence[str], services: Sequence[str]) -> None:
        """Drop every condition whose name starts with one of ``prefixes`` (with its metric
        series), then each of ``services`` that no remaining condition gates."""
        ...


class Component(Protocol):
    """A unit of background machinery with checks. Started after the servers are up;
    ``start`` must return quickly (load in the background) so ``startup`` never waits for it."""

    name: str

    def checks(self) -> Sequence[Check]: ...

    async def start(self, sink: ResultSink) -> None: ...

    async def stop(self) -> None: ...


class GpuStateView(Protocol):
    """What other components (the canary) may ask the GPU component, cheaply and from the
    event loop (answers come from the latest poll, never a fresh driver call)."""

    def exclusive_process(self) -> bool:
        """True when any of this pod's GPUs is in compute mode EXCLUSIVE_PROCESS (the canary
        worker must then create no CUDA context)."""
        ...

    def busy(self) -> bool:
        """True while the GPU is saturated (utilisation high): canaries back off."""
        ...

    def reset_generation(self) -> int:
        """Increments each time a GPU reset is observed (volatile counters cleared, recovery
        action back to none after a reset class). Sticky canary latches clear on a change."""
        ...

    def gpu_fault(self) -> bool:
        """True while any GPU-layer condition is failing (the GPU itself is at fault): the
        workload probe then never asks for a restart of the main container."""
        ...


@runtime_checkable
class TransitionListener(Protocol):
    """Told about every change of a condition's established state, on the event loop thread.
    Must not block: queue and do I/O elsewhere (Kubernetes Events, logs)."""

    def on_transition(self, transition: Transition) -> None: ...


@runtime_checkable
class ResultObserver(Protocol):
    """A component told every result the app records (after the policy folded them), on the
    event loop thread: trend detectors read canary latencies this way. Must not block."""

    def observe(self, results: Iterable[CheckResult]) -> None: ...


@dataclass(frozen=True)
class Publication:
    """One verdict, whole, as every publisher receives it: the conditions and the verdict of
    each service (liveness already NOT_SERVING while the loop watchdog holds it)."""

    conditions: Sequence[Condition] = ()
    verdicts: Mapping[str, ServiceVerdict] = field(default_factory=dict)


class Publisher(Protocol):
    """Serves verdicts (gRPC health, /healthz, /metrics, Diagnostics). Publishers only read:
    nothing they do changes a verdict. Called under the app's publish lock, from the event
    loop or (liveness only) the loop watchdog's thread, so it must be quick and never block.
    ``only``: the one service whose verdict changed (the watchdog's liveness); a publisher of
    per-service state writes just that one, a publisher of whole documents writes them whole."""

    def publish(self, publication: Publication, only: str | None = None) -> None: ...
