"""asyncio loop per check: interval + jitter, per-check timeout, single-flight, triggers.

- Each check runs every ``interval_s`` (± ``jitter`` x interval, so many pods do not poll the
  driver in lockstep), or at once when triggered (an event asked for a re-run).
- A run gets ``timeout_s`` (the first run gets ``first_timeout_s`` when the check defines it:
  hashing a big engine, the first canary after a load). A run that times out is reported with
  the check's ``on_timeout`` results — a finding for that check (readiness), never liveness.
- Single-flight: a run still in flight at the next tick is reported again through
  ``on_timeout`` instead of starting a second run (a thread stuck in a driver call cannot be
  killed, and stacking more of them would only leak threads). When it finally returns, its
  results are recorded.
- Each loop beats after every tick; :meth:`Scheduler.stalled` names loops that stopped beating
  (the liveness signal) — a loop stuck for good is a sidecar bug, which a restart does fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence

from sidecar.core.protocols import Check
from sidecar.core.values import (
    SERVICE_LIVENESS,
    SERVICE_READINESS,
    SERVICE_WORKLOAD_LIVENESS,
    CheckResult,
    Severity,
)

log = logging.getLogger(__name__)

Submit = Callable[[Sequence[CheckResult]], None]
RunObserver = Callable[[str, str, float], None]  # check name, outcome, seconds
Retire = Callable[[Sequence[str]], None]  # condition names no longer reported
_NEVER_ON_ERROR = frozenset({SERVICE_LIVENESS, SERVICE_WORKLOAD_LIVENESS})


def error_result(
    check: Check, exc: BaseException, gates: frozenset[str] = frozenset({SERVICE_READINESS})
) -> CheckResult:
    return CheckResult.unknown(
        check.name,
        "CheckError",
        f"{type(exc).__name__}: {exc}"[:300],
        severity=Severity.CRITICAL,
        gates=gates | {SERVICE_READINESS},
    )


class CheckLoop:
    """The loop of one check."""

    def __init__(
        self,
        check: Check,
        submit: Submit,
        *,
        jitter: float,
        clock: Callable[[], float] = time.monotonic,
        observe_run: RunObserver | None = None,
        rng: random.Random | None = None,
        retire: Retire | None = None,
    ) -> None:
        self.check = check
        self._submit = submit
        self._jitter = jitter
        self._clock = clock
        self._observe_run = observe_run
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._inflight: asyncio.Task[Sequence[CheckResult]] | None = None
        self._inflight_started = 0.0
        self.runs = 0
        self.last_beat = clock()
        self.task: asyncio.Task[None] | None = None
        # a raised run reports CheckError under the check's own name; when the check's results
        # use other condition names, the next good run must clear that condition
        self._error_reported = False
        self._retire = retire
        # the services the check's results gate: a raised run gates them too (a check that
        # cannot run says nothing good about engine/<name>, say)
        self._gates: frozenset[str] = frozenset({SERVICE_READINESS})

    def trigger(self) -> None:
        self._wake.set()

    def _record(self, outcome: str, seconds: float) -> None:
        if self._observe_run is not None:
            self._observe_run(self.check.name, outcome, seconds)

    def _submit_error(self, exc: BaseException) -> None:
        self._error_reported = True
        self._submit([error_result(self.check, exc, self._gates)])

    def _submit_results(self, results: Sequence[CheckResult]) -> None:
        """Record a completed run's results; a CheckError condition left by an earlier raised
        run under a name these results do not use is retired (the check works again)."""
        self._submit(results)
        # never a liveness service: a sidecar bug must not restart a container
        gates = frozenset(g for r in results for g in r.gates if g not in _NEVER_ON_ERROR)
        if gates:
            self._gates = gates
        if self._error_reported:
            self._error_reported = False
            name = self.check.name
            if all(r.name != name for r in results):
                if self._retire is not None:
                    self._retire([name])
                else:  # no way to drop it: replace the error with a pass
                    self._submit(
                        [CheckResult.passed(name, reason="Recovered", message="the check runs again")]
                    )

    def _finish_late(self, task: asyncio.Task[Sequence[CheckResult]]) -> None:
        """A run that outlived its timeout finally returned: record what it found."""
        if task.cancelled():
            return
        exc = task.exception()
        elapsed = self._clock() - self._inflight_started
        if exc is not None:
            self._submit_error(exc)
            self._record("error", elapsed)
        else:
            self._submit_results(task.result())
            self._record("late", elapsed)

    async def tick(self) -> None:
        check = self.check
        now = self._clock()
        if self._inflight is not None and not self._inflight.done():
            # Single-flight: report the stuck run again instead of starting another one.
            self._submit(check.on_timeout(now - self._inflight_started))
            self._record("inflight", now - self._inflight_started)
            return
        first_timeout = getattr(check, "first_timeout_s", None)
        timeout = first_timeout if (self.runs == 0 and first_timeout) else check.timeout_s
        self.runs += 1
        self._inflight_started = now
        task = asyncio.ensure_future(check.run())
        self._inflight = task
        done, _ = await asyncio.wait({task}, timeout=timeout)
        elapsed = self._clock() - now
        if not done:
            self._submit(check.on_timeout(elapsed))
            self._record("timeout", elapsed)
            task.add_done_callback(self._finish_late)
            return
        exc = task.exception()
        if exc is not None:
            log.warning("check raised", extra={"check": check.name, "error": f"{type(exc).__name__}: {exc}"})
            self._submit_error(exc)
            self._record("error", elapsed)
            return
        results = task.result()
        self._submit_results(results)
        self._record("ok" if all(r.ok for r in results) else "fail", elapsed)

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive any bug in one tick
                log.exception("check loop tick failed", extra={"check": self.check.name})
            self.last_beat = self._clock()
            interval = self.check.interval_s
            delay = interval * (1.0 + self._rng.uniform(-self._jitter, self._jitter))
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel of stop()
            # when the wake-up lands at the same moment, and the loop would never end
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, delay)):
                    await self._wake.wait()
            self._wake.clear()
            self.last_beat = self._clock()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None
        if self._inflight is not None and not self._inflight.done():
            self._inflight.cancel()


class Scheduler:
    """All check loops.

    A reload adds the checks of a replacement component *staged* (:meth:`add` with
    ``staged=True``): they run beside the live loops of the same names, then :meth:`promote`
    makes them the live ones once the old loops were removed (make-before-break)."""

    def __init__(
        self,
        submit: Submit,
        *,
        jitter: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        observe_run: RunObserver | None = None,
        retire: Retire | None = None,
    ) -> None:
        self._submit = submit
        self.jitter = jitter  # of the loops added from now on (a reload applies its config's)
        self._clock = clock
        self._observe_run = observe_run
        self._retire = retire
        self.loops: dict[str, CheckLoop] = {}
        self.staged: dict[str, CheckLoop] = {}

    def add(
        self,
        checks: Iterable[Check],
        *,
        submit: Submit | None = None,
        observe_run: RunObserver | None = None,
        retire: Retire | None = None,
        staged: bool = False,
        jitter: float | None = None,
    ) -> None:
        """Start a loop per check. ``submit``, ``observe_run``, ``retire`` and ``jitter``
        default to the scheduler's own; a staged component passes its own sink's, so nothing
        its loops do reaches the live conditions before the swap (and the jitter of the
        config being applied)."""
        target = self.staged if staged else self.loops
        checks = list(checks)
        for check in checks:
            if check.name in target:
                raise ValueError(f"duplicate check name {check.name!r}")
        for check in checks:
            loop = CheckLoop(
                check,
                submit or self._submit,
                jitter=self.jitter if jitter is None else jitter,
                clock=self._clock,
                observe_run=observe_run or self._observe_run,
                retire=retire or self._retire,
            )
            target[check.name] = loop
            loop.task = asyncio.create_task(loop.run_forever(), name=f"check:{check.name}")

    async def remove(self, names: Iterable[str], *, staged: bool = False) -> None:
        target = self.staged if staged else self.loops
        for name in list(names):
            loop = target.pop(name, None)
            if loop is not None:
                await loop.stop()

    def promote(self, names: Iterable[str]) -> None:
        """Staged loops become the live ones (the live loops of those names were removed)."""
        for name in list(names):
            loop = self.staged.pop(name, None)
            if loop is None:
                continue
            if name in self.loops:
                self.staged[name] = loop
                raise ValueError(f"duplicate check name {name!r}")
            self.loops[name] = loop

    def trigger(self, name: str) -> None:
        for loops in (self.loops, self.staged):
            loop = loops.get(name)
            if loop is not None:
                loop.trigger()

    def stalled(self, now: float, max_quiet_s: Callable[[Check], float]) -> list[str]:
        """Loops whose task died or that have not beaten for longer than allowed."""
        out = []
        for loops in (self.loops, self.staged):
            for name, loop in loops.items():
                if loop.task is None or loop.task.done():
                    out.append(name)
                elif now - loop.last_beat > max_quiet_s(loop.check):
                    out.append(name)
        return sorted(set(out))

    async def stop(self) -> None:
        await self.remove(list(self.staged), staged=True)
        await self.remove(list(self.loops))
