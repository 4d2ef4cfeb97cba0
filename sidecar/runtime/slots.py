"""The app's component slots: one per registry entry, holding the section's current
component, its metrics registry and its :class:`SlotSink`. Starting a component hands its
checks to the scheduler; stopping takes them back; :meth:`Slots.swap` makes a staged
replacement the live one (the last step of a make-before-break reload)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from sidecar.components import AnyEntry
from sidecar.core.policy import HealthPolicy
from sidecar.core.protocols import Component, TransitionListener
from sidecar.gpu.state_proxy import GpuStateProxy
from sidecar.publish.metrics import SectionCollectors
from sidecar.runtime.scenario import ScenarioFile
from sidecar.runtime.scheduler import Scheduler
from sidecar.runtime.slotsink import LiveSink, SlotSink

if TYPE_CHECKING:
    from sidecar.config import SidecarConfig

# component lines, under the logger they always had
log = logging.getLogger("sidecar.app")

Builder = Callable[[str, "SidecarConfig", CollectorRegistry], Component | None]


@dataclass
class Slot:
    entry: AnyEntry
    component: Component | None
    registry: CollectorRegistry
    sink: SlotSink


class Slots:
    """Every section's slot, in the registry's order (start order; stop is the reverse)."""

    def __init__(
        self,
        entries: Sequence[AnyEntry],
        *,
        live: LiveSink,
        build: Builder,
        scheduler: Scheduler,
        policy: HealthPolicy,
        collectors: SectionCollectors,
        gpu_state: GpuStateProxy,
        stop_timeout: Callable[[], float],
    ) -> None:
        self.entries = {e.section: e for e in entries}
        self._live = live
        self._build = build
        self._scheduler = scheduler
        self._policy = policy
        self._collectors = collectors
        self._gpu_state = gpu_state
        self._stop_timeout = stop_timeout
        self._slots: dict[str, Slot] = {}
        self.scenario: ScenarioFile | None = None  # set once the simulated world started

    @property
    def sections(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def get(self, section: str) -> Component | None:
        slot = self._slots.get(section)
        return slot.component if slot is not None else None

    def components(self) -> list[Component]:
        """The components with checks, in start order (not the listeners)."""
        return [s.component for s in self._slots.values() if s.component is not None and not s.entry.listener]

    def listeners(self) -> list[TransitionListener]:
        found: list[TransitionListener] = []
        for slot in self._slots.values():
            if slot.entry.listener and isinstance(slot.component, TransitionListener):
                found.append(slot.component)
        return found

    def reported(self) -> set[str]:
        """Condition names any current component ever reported."""
        names: set[str] = set()
        for slot in self._slots.values():
            names |= slot.sink.reported
        return names

    def build(self, section: str, config: SidecarConfig) -> tuple[Component | None, CollectorRegistry]:
        """The section's component on a fresh metrics registry (nothing starts here)."""
        registry = CollectorRegistry()
        return self._build(section, config, registry), registry

    async def install(self, section: str, config: SidecarConfig) -> None:
        """Build one section's component and put it in its slot (at start). The build runs on
        a thread, as during a reload: it imports the component's modules and reads files,
        and the loop is what liveness measures."""
        obj, registry = await asyncio.to_thread(self.build, section, config)
        self._put(section, obj, registry, SlotSink(self._live, staged=False))

    def _put(self, section: str, obj: Component | None, registry: CollectorRegistry, sink: SlotSink) -> None:
        entry = self.entries[section]
        self._slots[section] = Slot(entry, obj, registry, sink)
        self._collectors.targets[section] = registry
        if entry.gpu_view is not None:
            self._gpu_state.swap(entry.gpu_view(obj) if obj is not None else None)

    def check_names(self, section: str, obj: Component | None) -> list[str]:
        if obj is None or self.entries[section].listener:
            return []
        return [c.name for c in obj.checks()]

    async def start_component(
        self, section: str, obj: Component, sink: SlotSink, *, expect: bool, jitter: float | None = None
    ) -> None:
        if not self.entries[section].listener:
            checks = obj.checks()
            if expect:  # readiness waits for a check's first result
                self._policy.expect(c.name for c in checks)
            self._scheduler.add(
                checks,
                submit=sink.take,
                observe_run=sink.observe_run,
                retire=sink.retire_checks,
                staged=sink.staged,
                jitter=jitter,
            )
        await obj.start(sink)

    async def start(self, section: str) -> None:
        slot = self._slots.get(section)
        if slot is None or slot.component is None:
            return
        await self.start_component(section, slot.component, slot.sink, expect=True)

    def unsubscribe(self, section: str, obj: Component | None) -> None:
        """A retired component (and its GPU backend) hears no more scenario changes."""
        if self.scenario is not None and obj is not None:
            for owner in self.entries[section].owners(obj):
                self.scenario.unsubscribe_owner(owner)

    async def stop_component(self, section: str, obj: Component, *, staged: bool = False) -> None:
        self.unsubscribe(section, obj)
        try:
            if not self.entries[section].listener:
                await self._scheduler.remove((c.name for c in obj.checks()), staged=staged)
            await asyncio.wait_for(obj.stop(), timeout=self._stop_timeout())
        except Exception:
            log.exception("component stop failed", extra={"component": section})

    async def stop(self, section: str) -> None:
        slot = self._slots.get(section)
        if slot is None or slot.component is None:
            return
        await self.stop_component(section, slot.component)

    async def flush(self, section: str) -> None:
        """Before a replacement is built: the current component writes the state the
        replacement reads (the GPU latches), on a thread."""
        slot = self._slots.get(section)
        if slot is not None and slot.component is not None and slot.entry.flush is not None:
            await asyncio.to_thread(slot.entry.flush, slot.component)

    async def swap(
        self,
        section: str,
        obj: Component | None,
        registry: CollectorRegistry,
        sink: SlotSink,
        new_checks: Iterable[str],
    ) -> None:
        """The old component of ``section`` stops, its replacement (staged) becomes the live
        one and its held results are recorded. Nothing is awaited after the promotion: a
        cancellation leaves the section either swapped or not."""
        entry = self.entries[section]
        new_checks = list(new_checks)
        slot = self._slots.get(section)
        old = slot.component if slot is not None else None
        old_checks: list[str] = []
        if slot is not None and old is not None:
            old_checks = self.check_names(section, old)
            await self.stop_component(section, old)
            # late words of a stopped component (an event thread) are not evidence any more
            slot.sink.retired = True
        if old is not None and obj is not None and entry.hand_over is not None:
            await entry.hand_over(old, obj)
        if obj is not None:
            self._scheduler.promote(new_checks)
        # the staged runs were no first results of the live checks: the swap settles the
        # checks that ran; one without a first result yet holds readiness (fail closed); an
        # old check the replacement no longer has was removed
        for name in old_checks:
            if name not in new_checks:
                self._policy.settle(name)
        for name in new_checks:
            if name in sink.ran:
                self._policy.settle(name)
        self._policy.expect(n for n in new_checks if n not in sink.ran)
        self._put(section, obj, registry, sink)
        sink.go_live()
