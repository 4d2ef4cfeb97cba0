"""The sidecar process: run the app until SIGTERM/SIGINT, SIGHUP reloads, the exit code decided
here (EXIT_OK, EXIT_BIND, EXIT_TLS, EXIT_INTERNAL), and the ports file."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from typing import Any

from sidecar.app import SidecarApp
from sidecar.config import SidecarConfig
from sidecar.core.errors import BindError, TlsMaterialError

# the process's lines, under the logger they always had
log = logging.getLogger("sidecar.app")

__all__ = ["SidecarApp", "serve", "write_ports_file"]


def write_ports_file(path: str, app: SidecarApp) -> None:
    """The ports the app bound, as JSON, written atomically (a reader never sees half a file)."""
    doc = {
        "grpc_port": app.grpc_port,
        "grpc_tls_port": app.grpc_tls_port or None,
        "http_port": app.http.port if app.http else None,
        "pid": os.getpid(),
    }
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
        os.replace(tmp, path)
    except OSError as exc:
        log.error("cannot write the ports file", extra={"path": path[:200], "error": str(exc)[:300]})
        with contextlib.suppress(OSError):
            os.unlink(tmp)


async def serve(
    config: SidecarConfig, overrides: Mapping[tuple[str, ...], Any], *, ports_file: str | None = None
) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code. With ``ports_file``, the bound
    ports are written there as JSON once serving (the way to learn what port 0 became)."""
    from sidecar.core.errors import EXIT_BIND, EXIT_INTERNAL, EXIT_OK, EXIT_TLS
    from sidecar.runtime import stopsignals

    app = SidecarApp(config)
    app.overrides = overrides
    loop = asyncio.get_running_loop()
    # SIGTERM/SIGINT: handlers installed first thing in main (sidecar/runtime/stopsignals.py), kept
    # past the loop's close; from here on they stop the app gracefully
    stopsignals.install()
    stopsignals.on_stop(lambda: loop.call_soon_threadsafe(app.request_stop))
    if stopsignals.requested():
        app.request_stop()
    loop.add_signal_handler(signal.SIGHUP, app.request_reload)
    try:
        await app.start()
    except BindError as exc:
        log.error("cannot bind", extra={"error": str(exc)})
        await app.stop()
        return EXIT_BIND
    except TlsMaterialError as exc:
        log.error("cannot load TLS material", extra={"error": str(exc)})
        await app.stop()
        return EXIT_TLS
    except Exception:  # a bug: reported, and it must not leave threads that block the exit
        log.exception("start failed")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), timeout=config.shutdown_grace_s + 5.0)
        return EXIT_INTERNAL
    try:
        if ports_file:
            write_ports_file(ports_file, app)
    except Exception:  # a bug (an OSError is reported inside): stopped, exit 1, never a hang
        log.exception("cannot write the ports file", extra={"path": ports_file[:200] if ports_file else ""})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), timeout=config.shutdown_grace_s + 5.0)
        return EXIT_INTERNAL
    try:
        await app.wait_stopped()
        log.info("shutdown requested")
    finally:
        await app.stop()  # a cancelled serve stops the app too
    return EXIT_OK
