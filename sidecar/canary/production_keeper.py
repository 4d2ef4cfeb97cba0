"""The production engines on the component's side: what the worker loads, their goldens and
file fingerprints (read off the loop), and one round of each through the judge
(:mod:`sidecar.canary.production`), carrying out its release and load-again requests.

Rounds: every round runs each production engine loaded in the worker (in the same request
as the canary itself). One with ``release_after_verify`` is released once it passed and is not
run again; its pass stands while its files are unchanged, and when they change it is loaded
into the running worker again (``load_engine``) and verified by the next round.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.canary.config import CanaryConfig
from sidecar.canary.golden_store import ProductionGoldens
from sidecar.canary.judge import CanaryJudge
from sidecar.canary.outcome import RunOutcome
from sidecar.canary.production import Fingerprint
from sidecar.canary.protocol import ProductionSpec
from sidecar.canary.supervisor import CanarySupervisor
from sidecar.core.values import CheckResult


@dataclass(slots=True)
class _Engine:
    spec: ProductionSpec
    goldens: ProductionGoldens
    loaded: Fingerprint = None  # its files when the worker last loaded it


class ProductionEngines:
    """``canary.production_engines`` for one component (config order: the judge's index)."""

    def __init__(self, config: CanaryConfig) -> None:
        self.engines = [
            _Engine(
                ProductionSpec(str(e.manifest.resolve()), e.memory_budget_mib, e.release_after_verify),
                ProductionGoldens(e.manifest),
            )
            for e in config.engines
        ]

    def specs(self) -> tuple[ProductionSpec, ...]:
        return tuple(e.spec for e in self.engines)

    async def before_load(self, specs: tuple[ProductionSpec, ...]) -> None:
        """Note the files of each engine the worker is about to load (those released after
        verifying: their pass is of these files)."""
        wanted = {s.manifest for s in specs}
        for e in self.engines:
            if e.spec.manifest in wanted and e.spec.release_after_verify:
                e.loaded = await asyncio.to_thread(e.goldens.fingerprint)

    async def rounds(
        self,
        outcome: RunOutcome,
        generation: int,
        judge: CanaryJudge,
        sup: CanarySupervisor,
        now: float,
    ) -> list[CheckResult]:
        """Each engine's ``canary/engine/<name>`` for this round (a released one: whether its
        pass still stands); releases and loads again what the judge asks for."""
        out: list[CheckResult] = []
        for i, e in enumerate(self.engines):
            try:  # parsed again only when its files changed, on a thread
                found = await e.goldens.get()
            except Exception as exc:
                out.extend(judge.production_unreadable(exc, i).results)
                continue
            outputs = outcome.engine_outputs.get(e.spec.manifest)
            fp: Fingerprint = None
            if e.spec.release_after_verify:
                loaded = outputs is not None or (i == 0 and outcome.production_outputs is not None)
                fp = e.loaded if loaded else await asyncio.to_thread(e.goldens.fingerprint)
            j = judge.production_round(
                outcome, found, generation, index=i, outputs=outputs, fingerprint=fp, now=now
            )
            out.extend(j.results)
            if j.release_production:
                await sup.release_production(e.spec.manifest)
            if j.reload_production:
                e.loaded = fp
                err = await sup.load_engine(e.spec)
                if err is not None:
                    out = [r for r in out if r.name != j.results[0].name]  # replaced by why
                    out.append(judge.engines[i].reload_failed(err, found, fp, now))
        return out
