"""``trt-health-sidecar webhook`` / ``python -m sidecar.webhook``: parse the flags, serve until
SIGTERM / SIGINT, and return the process exit code (``sidecar.core.errors``)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from sidecar.core.errors import EXIT_BIND, EXIT_CONFIG, EXIT_OK, EXIT_TLS, BindError, TlsMaterialError
from sidecar.publish.log import JsonFormatter
from sidecar.webhook.options import WebhookOptions, add_webhook_arguments, options_from_args
from sidecar.webhook.server import WebhookServer

__all__ = ["main", "run_webhook"]

log = logging.getLogger("sidecar.webhook")  # one logger for the whole program, as before the split


def _ensure_logging() -> None:
    """JSON lines on stderr, the sidecar's format, unless the host process set up logging."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)


def run_webhook(
    argv_or_options: Sequence[str] | argparse.Namespace | WebhookOptions | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; returns the process exit code (sidecar.core.errors)."""
    _ensure_logging()
    if isinstance(argv_or_options, WebhookOptions):
        options = argv_or_options
    else:
        if isinstance(argv_or_options, argparse.Namespace):
            ns = argv_or_options
        else:
            parser = argparse.ArgumentParser(
                prog="trt-health-sidecar webhook", description="sidecar injection webhook"
            )
            add_webhook_arguments(parser)
            try:
                ns = parser.parse_args(argv_or_options)
            except SystemExit as exc:
                return EXIT_OK if exc.code == 0 else EXIT_CONFIG
        try:
            options = options_from_args(ns)
        except ValueError as exc:
            log.error("invalid arguments", extra={"error": str(exc)})
            print(f"trt-health-sidecar webhook: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    server = WebhookServer(options)
    try:
        server.start()
    except TlsMaterialError as exc:
        log.error("TLS material", extra={"error": str(exc)})
        return EXIT_TLS
    except BindError as exc:
        log.error("bind failed", extra={"error": str(exc)})
        return EXIT_BIND
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        log.info("webhook stopped")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_webhook(list(sys.argv[1:] if argv is None else argv))
