"""The component registry: one entry per config section with a component, in start order.

An entry names its section, its config parser and its builder; the builder takes the
section's parsed config and a :class:`BuildContext` and uses only what it names from it.
Modules of a component are imported inside its functions, so ``python -m sidecar probe``
(and anything else that only parses config) stays light. Adding a component is one entry
in :data:`COMPONENTS`: config parsing, building, start, stop and the make-before-break
reload all follow from it (``sidecar.runtime.slots``, ``sidecar.runtime.reload``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from sidecar.config.section import Section
from sidecar.core.protocols import Check, Component, GpuStateView, ResultSink
from sidecar.core.values import Transition

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sidecar.actions.component import ActionsComponent
    from sidecar.actions.config import ActionsConfig
    from sidecar.canary.component import CanaryComponent
    from sidecar.canary.config import CanaryConfig
    from sidecar.engine.component import EngineComponent
    from sidecar.engine.config import EnginesConfig
    from sidecar.gpu.component import GpuComponent
    from sidecar.gpu.config import GpuConfig
    from sidecar.gpu.latches import LatchStore
    from sidecar.gpu.state_proxy import GpuStateProxy
    from sidecar.publish.events import KubeEventEmitter
    from sidecar.publish.events_config import EventsConfig
    from sidecar.runtime.scenario import ScenarioFile
    from sidecar.trends.component import TrendComponent
    from sidecar.trends.config import TrendsConfig
    from sidecar.workload.component import WorkloadComponent
    from sidecar.workload.config import WorkloadConfig

# the hand-over lines of a reload, under the logger they always had
log = logging.getLogger("sidecar.app")

ConfigT = TypeVar("ConfigT")
BuiltT = TypeVar("BuiltT", bound=Component)


@dataclass(frozen=True)
class BuildContext:
    """Everything a builder may take. Each builder passes on only what its component uses."""

    registry: CollectorRegistry  # the section's own metrics (replaced with the component)
    simulate: bool
    scenario: ScenarioFile | None  # the simulated world (None unless simulating)
    state_dir: Path
    engines_dir: Path
    gpu_state: GpuStateProxy  # the current GPU component, across its reloads
    # an action a component took, told to the transition listeners (Events); not logged again
    announce: Callable[[Transition], None] = lambda t: None
    configs: Mapping[str, Any] = field(default_factory=dict)  # every section's parsed config


@dataclass(frozen=True)
class ComponentEntry(Generic[ConfigT, BuiltT]):
    """One config section with a component.

    ``build`` returns None when the section asks for nothing (Events disabled). Reload hooks:
    ``flush`` runs (on a thread) on the old component before its replacement is built, so
    the replacement reads current state; ``hand_over`` runs at the swap, after the old one
    stopped. ``gpu_view``: this component answers the other components' GPU questions.
    ``listener``: a TransitionListener with no checks (told every transition)."""

    section: str
    parse: Callable[[Section], ConfigT]
    build: Callable[[ConfigT, BuildContext], BuiltT | None]
    flush: Callable[[BuiltT], None] | None = None
    hand_over: Callable[[BuiltT, BuiltT], Awaitable[None]] | None = None
    scenario_owners: Callable[[BuiltT], Sequence[object]] | None = None  # default: itself
    gpu_view: Callable[[BuiltT], GpuStateView] | None = None
    listener: bool = False

    def owners(self, built: BuiltT) -> Sequence[object]:
        """What subscribed to the scenario on this component's behalf."""
        return self.scenario_owners(built) if self.scenario_owners is not None else (built,)


# -- GPU --------------------------------------------------------------------------------------
def _parse_gpu(sec: Section) -> GpuConfig:
    from sidecar.gpu.config import parse_gpu_config

    return parse_gpu_config(sec)


def _build_gpu(config: GpuConfig, ctx: BuildContext) -> GpuComponent:
    from sidecar.gpu.component import GpuComponent

    return GpuComponent(
        config, simulate=ctx.simulate, scenario=ctx.scenario, registry=ctx.registry, state_dir=ctx.state_dir
    )


def _flush_gpu(old: GpuComponent) -> None:
    old.latches.save()  # the replacement reads the latches the old one holds


class HoldsLatches(Protocol):
    @property
    def latches(self) -> LatchStore: ...


def hand_over_latches(old: HoldsLatches, new: HoldsLatches) -> None:
    """GPU latches the old component holds that were not in the file the replacement read
    (when it was built, after the old one flushed its state) move to the replacement, which
    then writes the file whole: the old one may have rewritten it when it stopped, without a
    latch only the replacement holds. By set, not by time: a latch's ``since`` is when its
    evidence started, not when it was added, so a latch added during the overlap may be dated
    before the flush. A latch the replacement read and no longer holds was cleared on
    evidence, and stays cleared."""
    old_store, new_store = old.latches, new.latches
    known = new_store.read_from_file()
    for uuid, latches in old_store.all_latches().items():
        for latch in latches:
            if (uuid, latch) not in known and new_store.add(uuid, latch):
                log.warning(
                    "GPU latch handed over across the reload",
                    extra={"uuid": uuid, "reason": latch.reason},
                )
    new_store.mark_dirty()  # write even when nothing was handed over (see above)
    new_store.save()


async def _hand_over_gpu(old: GpuComponent, new: GpuComponent) -> None:
    await asyncio.to_thread(hand_over_latches, old, new)


def _gpu_owners(gpu: GpuComponent) -> Sequence[object]:
    return (gpu, gpu.backend)  # the simulated backend subscribes on its own


def _gpu_view(gpu: GpuComponent) -> GpuStateView:
    return gpu


# -- canary -----------------------------------------------------------------------------------
def _parse_canary(sec: Section) -> CanaryConfig:
    from sidecar.canary.config import parse_canary_config

    return parse_canary_config(sec)


def _build_canary(config: CanaryConfig, ctx: BuildContext) -> CanaryComponent:
    from sidecar.canary.component import CanaryComponent

    return CanaryComponent(
        config,
        simulate=ctx.simulate,
        scenario=ctx.scenario,
        registry=ctx.registry,
        gpu_state=ctx.gpu_state,
        engines_dir=ctx.engines_dir,
        state_dir=ctx.state_dir,  # persisted SDC latches (tensor-core runner)
    )


async def _hand_over_canary(old: CanaryComponent, new: CanaryComponent) -> None:
    """The old canary's findings (its mismatch, production and SDC latches) move to the
    replacement, which started fresh: a reload is no evidence that the GPU recovered."""
    await new.take_over_latches(old)


# -- engines, workload, trends ----------------------------------------------------------------
def _parse_engines(sec: Section) -> EnginesConfig:
    from sidecar.engine.config import parse_engines_config

    return parse_engines_config(sec)


def _build_engines(config: EnginesConfig, ctx: BuildContext) -> EngineComponent:
    from sidecar.engine.component import EngineComponent

    return EngineComponent(
        config,
        registry=ctx.registry,
        gpu_compute_capability=ctx.gpu_state.compute_capability,
        gpu_free_memory_mib=ctx.gpu_state.free_memory_mib,
    )


def _parse_workload(sec: Section) -> WorkloadConfig:
    from sidecar.workload.config import parse_workload_config

    return parse_workload_config(sec)


def _build_workload(config: WorkloadConfig, ctx: BuildContext) -> WorkloadComponent | None:
    if not config.enabled:  # off (the default): nothing to probe, nothing imported
        return None
    from sidecar.workload.component import WorkloadComponent

    return WorkloadComponent(config, registry=ctx.registry, gpu_state=ctx.gpu_state)


def _parse_trends(sec: Section) -> TrendsConfig:
    from sidecar.trends.config import parse_trends_config

    return parse_trends_config(sec)


def _build_trends(config: TrendsConfig, ctx: BuildContext) -> TrendComponent:
    from sidecar.trends.component import TrendComponent

    return TrendComponent(config, registry=ctx.registry, state_dir=ctx.state_dir, gpu_samples=ctx.gpu_state)


# -- actions: engine rollback, degraded serving (docs/actions.md) ------------------------------
def _parse_actions(sec: Section) -> ActionsConfig:
    from sidecar.actions.config import parse_actions_config

    return parse_actions_config(sec)


def _build_actions(config: ActionsConfig, ctx: BuildContext) -> ActionsComponent | None:
    if not config.enabled:  # off (the default): nothing is built, no HTTP client is made
        return None
    from sidecar.actions.component import ActionsComponent, workload_probe_factory

    return ActionsComponent(
        config,
        registry=ctx.registry,
        announce=ctx.announce,
        probe_factory=workload_probe_factory(ctx.configs.get("workload")),
    )


# -- Kubernetes Events (a transition listener) ------------------------------------------------
class ListenerComponent:
    """A TransitionListener with a lifecycle in a component's place: no checks."""

    def __init__(self, name: str, emitter: KubeEventEmitter) -> None:
        self.name = name
        self.emitter = emitter

    def checks(self) -> Sequence[Check]:
        return ()

    async def start(self, sink: ResultSink) -> None:
        await self.emitter.start()

    async def stop(self) -> None:
        await self.emitter.stop()

    def on_transition(self, transition: Transition) -> None:
        self.emitter.on_transition(transition)


def _parse_events(sec: Section) -> EventsConfig:
    from sidecar.publish.events_config import parse_events_config

    return parse_events_config(sec)


def _build_events(config: EventsConfig, ctx: BuildContext) -> ListenerComponent | None:
    if not config.enabled:
        return None
    from sidecar.publish.events import KubeEventEmitter

    return ListenerComponent("events", KubeEventEmitter(config, registry=ctx.registry))


AnyEntry = ComponentEntry[Any, Any]

GPU: ComponentEntry[GpuConfig, GpuComponent] = ComponentEntry(
    "gpu",
    _parse_gpu,
    _build_gpu,
    flush=_flush_gpu,
    hand_over=_hand_over_gpu,
    scenario_owners=_gpu_owners,
    gpu_view=_gpu_view,
)
CANARY: ComponentEntry[CanaryConfig, CanaryComponent] = ComponentEntry(
    "canary", _parse_canary, _build_canary, hand_over=_hand_over_canary
)
ENGINES: ComponentEntry[EnginesConfig, EngineComponent] = ComponentEntry(
    "engines", _parse_engines, _build_engines
)
WORKLOAD: ComponentEntry[WorkloadConfig, WorkloadComponent] = ComponentEntry(
    "workload", _parse_workload, _build_workload
)
TRENDS: ComponentEntry[TrendsConfig, TrendComponent] = ComponentEntry("trends", _parse_trends, _build_trends)


async def _hand_over_actions(old: ActionsComponent, new: ActionsComponent) -> None:
    """The pins the old one made and the versions that failed here are not forgotten."""
    await new.take_over(old)


ACTIONS: ComponentEntry[ActionsConfig, ActionsComponent] = ComponentEntry(
    "actions", _parse_actions, _build_actions, hand_over=_hand_over_actions
)
EVENTS: ComponentEntry[EventsConfig, ListenerComponent] = ComponentEntry(
    "events", _parse_events, _build_events, listener=True
)

# Start order: the GPU first (the others ask it); stop order is the reverse.
COMPONENTS: tuple[AnyEntry, ...] = (GPU, CANARY, ENGINES, WORKLOAD, TRENDS, ACTIONS, EVENTS)


def sections(entries: Iterable[AnyEntry] = COMPONENTS) -> tuple[str, ...]:
    return tuple(e.section for e in entries)


def parsers(entries: Iterable[AnyEntry] = COMPONENTS) -> dict[str, Callable[[Section], Any]]:
    """The config parser of every component section (``sidecar.config`` parses through these)."""
    return {e.section: e.parse for e in entries}
