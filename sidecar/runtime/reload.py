"""Config reload (SIGHUP, or the config file changed): make-before-break.

Reloads run one at a time; requests that arrive while one runs collapse into one more
reload after it (a SIGHUP storm is one or two reloads). A valid config applies; an invalid
one is reported and the old one stays. Ports, TLS and simulation need a restart (reported).
Only the sections whose config changed are rebuilt: their replacements are built and
started *staged* beside the old components, and each section swaps once its replacement
has evidence (:meth:`Reloader.restart_sections`), so an unchanged verdict never blinks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from sidecar.config import ConfigError, SidecarConfig, load_config
from sidecar.core.protocols import Component
from sidecar.publish.log import configure_logging
from sidecar.runtime.slotsink import SlotSink
from sidecar.runtime.watch import FileChanges, Stamp, stamp

if TYPE_CHECKING:
    from sidecar.app import SidecarApp

# the reload lines, under the logger they always had
log = logging.getLogger("sidecar.app")

CONFIG_POLL_S = 1.0  # how often the config file's stamp is looked at (inotify's backup)
CONFIG_DEBOUNCE_S = 0.25  # an editor's write in pieces is one reload


class Reloader:
    """The app's config reloads: :meth:`request` (SIGHUP), :meth:`reload` (one reload, the
    file watcher's and the tests'), and the config file watch."""

    def __init__(self, app: SidecarApp) -> None:
        self._app = app
        # reloads run one at a time; requests meanwhile collapse into one more (SIGHUP storm)
        self.lock = asyncio.Lock()
        self._again = False
        self.task: asyncio.Task[None] | None = None
        self._config_stamp: Stamp | None = None

    # -- requests ---------------------------------------------------------------------------
    def request(self) -> None:
        """SIGHUP: reload soon. Reloads run one at a time; requests that arrive while one
        runs collapse into one more reload after it (a SIGHUP storm is one or two reloads)."""
        self._again = True
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._requested())

    async def _requested(self) -> None:
        while self._again and not self._app.stopped:
            self._again = False
            try:
                await self.reload()
            except Exception:  # the next SIGHUP must still work
                log.exception("config reload failed")

    async def reload(self, overrides: Mapping[tuple[str, ...], Any] | None = None) -> bool:
        """Re-read the config. One reload at a time (a second waits for the first)."""
        async with self.lock:
            if self._app.stopped:
                return False
            return await self._reload_once(overrides)

    # -- the config file --------------------------------------------------------------------
    def _stat_config(self) -> Stamp | None:
        return stamp(self._app.config.config_file)

    async def start_watch(self) -> asyncio.Task[None]:
        """Watch the config file (:class:`sidecar.runtime.watch.FileChanges`: inotify, a stat
        poll every second behind it, or the poll alone on NFS / FUSE). The watch is armed when
        this returns (a change from then on is seen); the task holds it until cancelled."""
        self._config_stamp = await asyncio.to_thread(self._stat_config)
        changes = FileChanges(
            [Path(self._app.config.config_file)],
            self._config_changed,
            name="config file",
            poll_interval_s=CONFIG_POLL_S,
            backup_poll_s=CONFIG_POLL_S,
            debounce_s=CONFIG_DEBOUNCE_S,
        )
        await changes.start()
        return asyncio.create_task(self._hold_watch(changes), name="config-watch")

    async def _hold_watch(self, changes: FileChanges) -> None:
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            await changes.stop()

    async def _config_changed(self) -> None:
        stamp = await asyncio.to_thread(self._stat_config)
        if stamp != self._config_stamp and stamp is not None:
            self._config_stamp = stamp
            try:
                await self.reload()
            except Exception:  # the watcher must survive any reload bug
                log.exception("config reload failed")

    # -- one reload -------------------------------------------------------------------------
    async def _reload_once(self, overrides: Mapping[tuple[str, ...], Any] | None) -> bool:
        app = self._app
        try:
            # reading and parsing a file never runs on the loop
            new = await asyncio.to_thread(
                load_config,
                config_file=app.config.config_file or None,
                overrides=overrides or app.overrides,
            )
        except ConfigError as exc:
            app.metrics.config_reloads.labels("rejected").inc()
            log.error("config reload rejected, old config stays", extra={"problems": exc.problems})
            return False
        old = app.config
        if new == old:
            app.metrics.config_reloads.labels("unchanged").inc()
            return True
        if new.grpc != old.grpc or new.http != old.http or new.simulate != old.simulate:
            log.warning("config reload: listener or simulation changes need a restart")

        def apply() -> None:  # only once the reload can no longer be rejected
            app.policy.reconfigure(new.policy)
            configure_logging(new.log_level, new.log_format)
            app.scheduler.jitter = new.jitter

        changed = [s for s in app.slots.sections if new.components.get(s) != old.components.get(s)]
        if not changed:
            apply()
        else:
            try:
                await self.restart_sections(new, changed, commit=apply)
            except Exception as exc:
                app.metrics.config_reloads.labels("rejected").inc()
                log.exception(
                    "config reload failed while rebuilding components, old ones stay",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
                return False
        app.config = new
        app.metrics.config_reloads.labels("applied").inc()
        log.info("config reloaded")
        app.publish()
        return True

    async def restart_sections(
        self, new: SidecarConfig, sections: list[str], commit: Callable[[], None] | None = None
    ) -> None:
        """Replace the components of the changed sections, make-before-break.

        1. Every replacement is built (nothing starts; the GPU component first flushes its
           latches so the replacement reads the current ones). A build that fails raises:
           nothing was touched, the old components run on.
        2. The replacements start *staged*: their checks run beside the old ones, their
           results are held (:class:`SlotSink`), the old components keep reporting. A start
           that fails stops the replacements started so far and raises.
           What a staged loop does stays with its replacement: a run settles no live
           check, a retired CheckError leaves only the held results.
        3. Each section swaps as soon as its replacement's checks ran and none of its
           results is still "no evidence yet", or one of them is FATAL (never waiting for
           another section), and every section once the first timeouts passed: the old
           checks and component stop, GPU latches the old one set meanwhile are handed over,
           the held results are recorded. Just before the first swap ``commit`` runs (the
           reload's other changes apply only once it can no longer be rejected).
           Conditions carry over (same names), so an unchanged verdict does not blink;
           conditions no longer reported are dropped once every check had time to report
           them. A failed start or a cancellation (shutdown) stops every replacement not
           swapped in yet.
        """
        slots = self._app.slots
        Staged = tuple[str, Component | None, CollectorRegistry, SlotSink]
        built: list[Staged] = []
        for section in sections:
            await slots.flush(section)
            try:
                # a build reads files (latches, manifests): on a thread
                obj, registry = await asyncio.to_thread(slots.build, section, new)
            except BaseException:  # the reload is rejected: nothing was started or swapped
                for done_section, done, _r, _k in built:
                    slots.unsubscribe(done_section, done)
                raise
            built.append((section, obj, registry, SlotSink(self._app.pipeline, staged=True)))
        started: list[tuple[str, Component]] = []
        swapped: set[str] = set()
        committed = False
        try:
            for section, obj, _registry, sink in built:
                if obj is not None:
                    started.append((section, obj))
                    await slots.start_component(section, obj, sink, expect=False, jitter=new.jitter)
            # each staged check runs at once; its first results come within its (first) timeout
            new_checks = {section: slots.check_names(section, obj) for section, obj, _r, _s in built}
            grace = max(
                (
                    getattr(c, "first_timeout_s", None) or c.timeout_s
                    for section, obj, _r, _s in built
                    if obj is not None and not slots.entries[section].listener
                    for c in obj.checks()
                ),
                default=0.0,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace + 1.0
            waiting = list(built)
            while waiting:
                for *_rest, sink in waiting:
                    sink.changed.clear()  # before looking: a change from now on wakes us
                # a section swaps once its own replacement settled (or found a FATAL fault):
                # never waiting for another section's slow first run
                ready = [
                    item
                    for item in waiting
                    if item[1] is None or item[3].fatal or item[3].settled(new_checks[item[0]])
                ]
                left = deadline - loop.time()
                if not ready and left <= 0:
                    log.warning(
                        "config reload: replacement component still without evidence; swapping",
                        extra={"components": [item[0] for item in waiting]},
                    )
                    ready = list(waiting)
                if not ready:
                    waits = [asyncio.ensure_future(item[3].changed.wait()) for item in waiting]
                    try:
                        await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for w in waits:
                            w.cancel()
                    continue
                if not committed:  # the point of no return: the reload applies from here
                    committed = True
                    if commit is not None:
                        commit()
                for item in ready:
                    waiting.remove(item)
                    section, obj, registry, sink = item
                    await slots.swap(section, obj, registry, sink, new_checks.get(section, []))
                    swapped.add(section)
        except BaseException:  # a failed start, or the reload cancelled (shutdown)
            # every replacement not yet swapped in is stopped: nothing else would stop it
            for section, obj in started:
                if section not in swapped:
                    await slots.stop_component(section, obj, staged=True)
            raise
        swap_at = self._app.clock()
        loop.call_later(grace + 1.0, self._forget_stale, swap_at)

    def _forget_stale(self, since: float) -> None:
        """After a reload: drop conditions that no current component ever reported and that
        got no result since the swap."""
        app = self._app
        keep = app.slots.reported()
        stale = [c.name for c in app.policy.conditions() if c.last_result_at < since and c.name not in keep]
        if stale:
            log.info("conditions no longer reported after reload", extra={"conditions": stale})
            app.pipeline.drop_conditions(stale)
