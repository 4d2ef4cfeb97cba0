"""SIGTERM and SIGINT for ``serve``: installed first thing in ``main``, kept until the exit.

Before the event loop runs there is nothing to drain, so a stop signal exits 0 at once (even
while start-up is busy importing or reading a file). Once ``serve`` registered its stop
hook, a signal asks the app to stop gracefully. The handlers stay installed until the process
exits (asyncio's own signal handlers would be removed when the loop closes, reopening a
window in which SIGTERM kills with 143 and SIGINT prints a KeyboardInterrupt traceback).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_hook: Callable[[], object] | None = None
_requested = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    hook = _hook
    if hook is None:
        raise SystemExit(0)
    try:
        hook()
    except RuntimeError:  # the loop closed already: the process is on its way out
        pass


def install() -> None:
    """Take over SIGTERM and SIGINT (main thread only; a no-op elsewhere)."""
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _on_signal)
    except ValueError:  # not the main thread (an embedded / test caller): leave them alone
        pass


def on_stop(hook: Callable[[], object] | None) -> None:
    """From now on a stop signal calls ``hook`` (None: exit 0 at once again)."""
    global _hook
    _hook = hook


def requested() -> bool:
    """A stop signal arrived since start."""
    return _requested
