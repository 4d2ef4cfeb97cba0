"""The verdict pipeline: results -> policy -> transitions (logged, counted, told to the
listeners; results told to the observers) -> verdict -> every publisher.

Everything here runs on the event loop except :meth:`Pipeline.submit`, :meth:`trigger`,
:meth:`retire` and :meth:`on_loop`, which are thread-safe (components' event threads)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sidecar.core.policy import HealthPolicy
from sidecar.core.protocols import Clock, Component, ResultObserver, TransitionListener
from sidecar.core.values import CheckResult, ServiceVerdict, Transition
from sidecar.publish.fanout import PublisherSet
from sidecar.publish.grpc_health import HealthRegistry
from sidecar.publish.metrics import CoreMetrics

# the pipeline's lines, under the logger they always had (operators and tests filter on it)
log = logging.getLogger("sidecar.app")


class Pipeline:
    """The app's ResultSink (and LiveSink of its components' slot sinks)."""

    def __init__(
        self,
        *,
        policy: HealthPolicy,
        metrics: CoreMetrics,
        publishers: PublisherSet,
        health: HealthRegistry,
        clock: Clock,
    ) -> None:
        self.policy = policy
        self.metrics = metrics
        self.publishers = publishers
        self.health = health
        self.clock = clock
        # set by the app once built: what to trigger checks on, and who observes / listens
        self.trigger_check: Callable[[str], None] = lambda _name: None
        self.components: Callable[[], Sequence[Component]] = list
        self.listeners: Callable[[], Sequence[TransitionListener]] = list
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._observers_failing: set[str] = set()  # ResultObservers in a failure streak
        self._served: dict[str, bool] = {}  # service -> SERVING, as last logged

    def bind_loop(self) -> None:
        """From now on thread-safe calls run on the running loop (before: dropped)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()

    def on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # -- ResultSink (thread-safe) -------------------------------------------------------------
    def submit(self, results: Iterable[CheckResult]) -> None:
        """Thread-safe: record results (event-driven path)."""
        self.on_loop(self.submit_now, list(results))

    def trigger(self, check_name: str) -> None:
        self.on_loop(self.trigger_check, check_name)

    def retire(self, prefixes: Sequence[str], services: Sequence[str]) -> None:
        """Thread-safe: a source went away (a GPU left the inventory): drop its conditions,
        their metric series, and its services that nothing else gates."""
        self.on_loop(self.retire_now, list(prefixes), list(services))

    # -- on the loop --------------------------------------------------------------------------
    def retire_now(self, prefixes: list[str], services: list[str]) -> None:
        names = [c.name for c in self.policy.conditions() if c.name.startswith(tuple(prefixes))]
        self.policy.forget(names)
        self.metrics.drop_conditions(names)
        gone = self.policy.forget_services(services)
        self.health.remove(gone)
        if names or gone:
            log.info("conditions retired", extra={"conditions": names, "services": gone})
        self.publish()

    def drop_conditions(self, names: Sequence[str]) -> None:
        """Conditions whose source went away leave the policy, with their metric series."""
        names = [n for n in names if any(c.name == n for c in self.policy.conditions())]
        if not names:
            return
        self.policy.forget(names)
        self.metrics.drop_conditions(names)
        self.publish()

    def submit_now(self, results: Sequence[CheckResult]) -> None:
        if not results:
            return
        now = self.clock()
        for r in results:
            log.debug(
                "result",
                extra={
                    "condition": r.name,
                    "status": r.status.value,
                    "reason": r.reason,
                    "detail": r.message,
                },
            )
        transitions = self.policy.observe(results, now)
        for t in transitions:
            self._on_transition(t)
        for component in self.components():
            if isinstance(component, ResultObserver):
                self._tell_observer(component.name, component, results)
        self.publish()

    def _tell_observer(self, name: str, observer: ResultObserver, results: Sequence[CheckResult]) -> None:
        """A failing observer loses its own observation only: the results are still
        published, the submitting check loop never sees the exception, and the fault is
        logged once per failure streak (not once per result)."""
        try:
            observer.observe(results)
        except Exception:
            if name not in self._observers_failing:
                self._observers_failing.add(name)
                log.exception("result observer failed", extra={"component": name})
            return
        if name in self._observers_failing:
            self._observers_failing.discard(name)
            log.info("result observer recovered", extra={"component": name})

    def observe_run(self, check: str, outcome: str, seconds: float) -> None:
        self.policy.settle(check)
        self.record_run(check, outcome, seconds)

    def record_run(self, check: str, outcome: str, seconds: float) -> None:
        self.metrics.record_run(check, outcome, seconds)

    def _on_transition(self, t: Transition) -> None:
        to = "unknown" if t.healthy is None else ("healthy" if t.healthy else "unhealthy")
        level = logging.INFO if t.healthy is not False else logging.WARNING
        log.log(
            level,
            "condition changed",
            extra={
                "condition": t.condition,
                "to": to,
                "from": "unknown" if t.previous is None else ("healthy" if t.previous else "unhealthy"),
                "reason": t.reason,
                "detail": t.message,
                "severity": t.severity.name.lower(),
                "labels": dict(t.labels),
            },
        )
        self.metrics.record_transition(t, to)
        for listener in self.listeners():
            try:
                listener.on_transition(t)
            except Exception:
                log.exception("transition listener failed")

    def announce(self, t: Transition) -> None:
        """An action a component took (it logged and counted it), to the transition listeners."""
        for listener in self.listeners():
            try:
                listener.on_transition(t)
            except Exception:
                log.exception("transition listener failed")

    def publish(self) -> None:
        """The policy's verdict, to every publisher."""
        verdicts = self.policy.verdicts()
        self._log_service_changes(verdicts)
        self.publishers.publish(self.policy.conditions(), verdicts)

    def _log_service_changes(self, verdicts: Mapping[str, ServiceVerdict]) -> None:
        """One line per service whose status changed (every service starts NOT_SERVING)."""
        previous = self._served
        now = {name: bool(v.serving) for name, v in verdicts.items()}
        for name, v in sorted(verdicts.items()):
            if now[name] == previous.get(name, False):
                continue
            planned = tuple(v.reasons) == ("ShuttingDown",)  # a stop we were asked for
            log.log(
                logging.INFO if v.serving or planned else logging.WARNING,
                "service changed",
                extra={
                    "service": name,
                    "to": "SERVING" if v.serving else "NOT_SERVING",
                    "from": "SERVING" if previous.get(name, False) else "NOT_SERVING",
                    "reasons": list(v.reasons),
                },
            )
        self._served = now
