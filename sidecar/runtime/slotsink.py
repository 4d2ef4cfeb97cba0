"""The ResultSink of one component: live, or *staged* (a replacement built by a reload,
running beside the component it replaces, whose results wait for the swap)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from sidecar.core.values import CheckResult, CheckStatus, Severity


class LiveSink(Protocol):
    """What the app offers the sinks of its components (loop thread unless said)."""

    def on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Thread-safe: ``fn(*args)`` on the loop (at once when already there; dropped
        before the app started)."""
        ...

    def trigger(self, check_name: str) -> None: ...

    def submit_now(self, results: Sequence[CheckResult]) -> None: ...

    def retire_now(self, prefixes: list[str], services: list[str]) -> None: ...

    def drop_conditions(self, names: Sequence[str]) -> None: ...

    def observe_run(self, check: str, outcome: str, seconds: float) -> None: ...

    def record_run(self, check: str, outcome: str, seconds: float) -> None: ...


class SlotSink:
    """The ResultSink of one component. Live, it forwards to the app. *Staged* (a replacement
    built by a reload, running beside the component it replaces), it keeps the latest result
    of each condition instead, so the replacement's start-up results ("loading", "starting")
    never reach the verdict; :meth:`go_live` hands them over at the swap. Always on the loop
    thread except :meth:`submit`, :meth:`trigger` and :meth:`retire` (thread-safe)."""

    def __init__(self, app: LiveSink, *, staged: bool) -> None:
        self._app = app
        self.staged = staged
        self.held: dict[str, CheckResult] = {}
        self.reported: set[str] = set()  # condition names this component ever reported
        self.ran: set[str] = set()  # checks that completed (or timed out) a run
        self.fatal = False  # a held result is a FATAL failure: swap at once
        self.retired = False  # the component was replaced: what it still sends is dropped
        self._retires: list[tuple[list[str], list[str]]] = []  # asked while staged
        self._dropped: list[str] = []  # CheckErrors its check loops retired while staged
        self.changed = asyncio.Event()

    def submit(self, results: Iterable[CheckResult]) -> None:
        self._app.on_loop(self.take, list(results))

    def trigger(self, check_name: str) -> None:
        self._app.trigger(check_name)

    def retire(self, prefixes: Sequence[str], services: Sequence[str]) -> None:
        """Thread-safe (ConditionRetirer): a source of this component went away. Staged, the
        request waits for the swap (the old component still reports those conditions)."""
        self._app.on_loop(self._retire_now, list(prefixes), list(services))

    def _retire_now(self, prefixes: list[str], services: list[str]) -> None:
        if self.retired:
            return
        starts = tuple(prefixes)
        self.reported = {n for n in self.reported if not n.startswith(starts)}
        for name in [n for n in self.held if n.startswith(starts)]:
            del self.held[name]
        if self.staged:
            self._retires.append((prefixes, services))
        else:
            self._app.retire_now(prefixes, services)

    def retire_checks(self, names: Sequence[str]) -> None:
        """A check loop of this component retires the CheckError it reported under the
        check's own name (the check works again; its results use other names). Staged, the
        error leaves what this component holds (it would otherwise stay "no evidence yet"
        and be recorded at the swap) and the live condition of that name is dropped only at
        the swap: until then it is the old component's."""
        if self.retired:
            return
        if not self.staged:
            self._app.drop_conditions(names)
            return
        for name in names:
            self.held.pop(name, None)
            self.reported.discard(name)
            self._dropped.append(name)
        self.changed.set()

    def take(self, results: Sequence[CheckResult]) -> None:
        """Scheduler and event results of this component (loop thread)."""
        if self.retired:
            return
        self.reported.update(r.name for r in results)
        if not self.staged:
            self._app.submit_now(results)
            return
        for r in results:
            self.held.pop(r.name, None)
            self.held[r.name] = r
            if r.name in self._dropped:  # reported again since: not to be dropped
                self._dropped = [n for n in self._dropped if n != r.name]
            if r.status is CheckStatus.FAIL and r.severity >= Severity.FATAL:
                self.fatal = True
        self.changed.set()

    def observe_run(self, check: str, outcome: str, seconds: float) -> None:
        """A run of one of this component's checks ended. Staged, only its metrics are
        recorded: the run is no first result of the live check of that name (the swap
        settles the checks that ran)."""
        self.ran.add(check)
        if self.staged:
            self._app.record_run(check, outcome, seconds)
        else:
            self._app.observe_run(check, outcome, seconds)
        self.changed.set()

    def settled(self, checks: Iterable[str]) -> bool:
        """Every check ran once and no held result is still "no evidence yet" (UNKNOWN)."""
        return set(checks) <= self.ran and all(
            r.status is not CheckStatus.UNKNOWN for r in self.held.values()
        )

    def go_live(self) -> None:
        self.staged = False
        for prefixes, services in self._retires:
            self._app.retire_now(prefixes, services)
        self._retires.clear()
        held = list(self.held.values())
        self.held.clear()
        if held:
            self._app.submit_now(held)
        # after the held results: dropping first could publish a verdict without either
        dropped, self._dropped = self._dropped, []
        if dropped:
            self._app.drop_conditions(dropped)
