"""``probe``'s entry point: parse the flags, print the options with ``-v``, load the TLS files,
then one Check; the exit code is decided here (codes in :mod:`sidecar.probe`)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from sidecar.core.errors import PROBE_INVALID_ARGUMENTS, PROBE_OK
from sidecar.probe.flags import PROG, ProbeArgError, ProbeOptions, parse_args, usage_text
from sidecar.probe.gofmt import format_go_duration, go_headers
from sidecar.probe.interrupts import Interrupts
from sidecar.probe.tls import TlsMaterial, TlsSetupError, tls_material
from sidecar.probe.wire import run_check

__all__ = ["main", "run_probe"]


def run_probe(opts: ProbeOptions, err: TextIO | None = None, *, close_channel: bool = True) -> int:
    """Connect, call Check once, print the Go tool's messages to ``err``; return the exit code.

    ``close_channel=False`` is for a process that exits right after (what :func:`main` does):
    grpcio's ``Channel.close()`` waits for its connectivity poller's 200 ms watch to expire,
    which would double the wall time of an exec probe; process exit releases the channel anyway.
    """
    stream = err if err is not None else sys.stderr

    def log(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    if opts.alts or opts.spiffe:
        which = "-alts" if opts.alts else "-spiffe"
        log(
            f"error: {which} is not supported by {PROG}; use the Go grpc_health_probe binary "
            "for ALTS or SPIFFE credentials"
        )
        return PROBE_INVALID_ARGUMENTS

    if opts.verbose:
        log("parsed options:")
        log(
            f"> addr={opts.addr} conn_timeout={format_go_duration(opts.connect_timeout)} "
            f"rpc_timeout={format_go_duration(opts.rpc_timeout)}"
        )
        if opts.rpc_headers:
            log(f"> headers: {go_headers(opts.rpc_headers)}")
        log(f"> tls={str(opts.tls).lower()}")
        if opts.tls:
            log(f"  > no-verify={str(opts.tls_no_verify).lower()} ")
            log(f"  > ca-cert={opts.tls_ca_cert}")
            log(f"  > client-cert={opts.tls_client_cert}")
            log(f"  > client-key={opts.tls_client_key}")
            log(f"  > server-name={opts.tls_server_name}")
        log(f"> alts={str(opts.alts).lower()}")
        log(f"> spiffe={str(opts.spiffe).lower()}")

    tls_parts: TlsMaterial | None = None
    if opts.tls:
        try:
            tls_parts = tls_material(opts)
        except TlsSetupError as exc:
            log(f"failed to initialize tls credentials. error={exc}")
            return PROBE_INVALID_ARGUMENTS

    if not opts.verbose:
        # grpc core logs handshake failures itself; the Go tool prints only its own lines.
        # With -v they stay: they say *why* a connect timed out (grpc_health_probe#158).
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    with Interrupts(log) as interrupts:
        return run_check(opts, tls_parts, interrupts, log, close_channel)


def _version_line() -> str:
    from sidecar import __version__

    return f"{PROG} {__version__} (grpc_health_probe compatible)"


def main(argv: list[str] | None = None) -> int:
    """Run ``probe`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = sys.argv[1:] if argv is None else argv
    parsed = parse_args(args)
    if isinstance(parsed, ProbeArgError):
        if parsed.message:
            sys.stderr.write(parsed.message + "\n")
        if parsed.show_usage:
            sys.stderr.write(usage_text())
        sys.stderr.flush()
        return parsed.exit_code
    if parsed.version:
        sys.stdout.write(_version_line() + "\n")
        sys.stdout.flush()
        return PROBE_OK
    return run_probe(parsed, close_channel=False)
