"""Command line: serve, probe, status, engine, webhook, version. The only place that exits.

Exit codes of ``serve`` (see sidecar/core/errors.py and the README):
0 clean shutdown, 1 internal error, 2 config error, 3 cannot bind, 4 bad TLS material.
``probe`` uses grpc_health_probe's codes 0/1/2/3/4.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sidecar import __version__
from sidecar.config import defaults
from sidecar.core.errors import EXIT_CONFIG, EXIT_INTERNAL


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the sidecar (gRPC health + HTTP + checks)")
    p.add_argument("--config", metavar="FILE", help="YAML config file (env TRT_HEALTH_CONFIG)")
    p.add_argument("--grpc-port", type=int, metavar="N", help=f"plaintext gRPC port ({defaults.GRPC_PORT})")
    p.add_argument("--http-port", type=int, metavar="N", help=f"HTTP port ({defaults.HTTP_PORT})")
    p.add_argument("--grpc-host", metavar="HOST", help="gRPC bind host ([::])")
    p.add_argument("--unix-socket", metavar="PATH", help="also serve gRPC on this Unix socket")
    p.add_argument(
        "--simulate",
        action="store_true",
        default=None,
        help="use the simulated GPU and canary fault modes (demo, tests, chaos drills)",
    )
    p.add_argument("--scenario", metavar="FILE", help="scenario YAML driving the simulation")
    p.add_argument("--state-dir", metavar="DIR", help=f"persisted latches ({defaults.STATE_DIR})")
    p.add_argument("--engines-dir", metavar="DIR", help="where the canary model lives")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("json", "text"))
    p.add_argument(
        "--ports-file",
        metavar="FILE",
        help="once serving, write the bound ports as JSON to FILE (for --grpc-port 0 / --http-port 0)",
    )


def _status_parser(sub: Any) -> None:
    p = sub.add_parser("status", help="table of every service and check (diagnostics RPC)")
    p.add_argument(
        "--addr",
        default=f"localhost:{defaults.GRPC_PORT}",
        metavar="HOST:PORT",
        help=f"gRPC address of the sidecar (localhost:{defaults.GRPC_PORT}; ':PORT' is localhost)",
    )
    p.add_argument("--timeout", type=float, default=2.0, help="seconds")
    p.add_argument("--prefix", default="", help="only conditions starting with this")
    p.add_argument("--json", action="store_true", help="the /healthz JSON document")


def _peers_parser(sub: Any) -> None:
    p = sub.add_parser(
        "peers",
        help="compare this sidecar's canary digest with its peers' (diagnostics RPC on each)",
    )
    p.add_argument(
        "--addr",
        default=f"localhost:{defaults.GRPC_PORT}",
        metavar="HOST:PORT",
        help="this sidecar (default: %(default)s)",
    )
    p.add_argument("peers", nargs="+", metavar="PEER", help="HOST:PORT of a peer sidecar (at most 64)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per sidecar")
    p.add_argument("--json", action="store_true", help="the verdict as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trt-health-sidecar",
        description="Deep health-check sidecar for GPU inference services (grpc.health.v1).",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _serve_parser(sub)
    _peers_parser(sub)
    sub.add_parser("probe", help="grpc_health_probe drop-in (same flags and exit codes)", add_help=False)
    _status_parser(sub)
    try:
        from sidecar.engine.cli import add_engine_subcommands

        add_engine_subcommands(sub)
    except ImportError:  # pragma: no cover
        pass
    try:
        from sidecar.webhook import add_webhook_arguments

        add_webhook_arguments(sub.add_parser("webhook", help="mutating admission webhook (HTTPS)"))
    except ImportError:  # pragma: no cover
        pass
    return parser


def _serve_overrides(args: argparse.Namespace) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    pairs = [
        ("grpc_port", ("grpc", "port")),
        ("http_port", ("http", "port")),
        ("grpc_host", ("grpc", "host")),
        ("unix_socket", ("grpc", "unix_socket")),
        ("simulate", ("simulate",)),
        ("scenario", ("scenario",)),
        ("state_dir", ("state_dir",)),
        ("engines_dir", ("engines_dir",)),
        ("log_level", ("log", "level")),
        ("log_format", ("log", "format")),
    ]
    for attr, path in pairs:
        value = getattr(args, attr)
        if value is not None:
            out[path] = value
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    from sidecar.config import ConfigError, load_config
    from sidecar.publish.log import configure_logging
    from sidecar.serve import serve

    overrides = _serve_overrides(args)
    try:
        config = load_config(config_file=args.config, overrides=overrides)
    except ConfigError as exc:
        print("trt-health-sidecar: invalid configuration:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, config.log_format)
    import asyncio

    return asyncio.run(serve(config, overrides, ports_file=args.ports_file))


def cmd_status(args: argparse.Namespace) -> int:
    import grpc

    from sidecar.core.errors import PROBE_CONNECTION_FAILURE, PROBE_RPC_FAILURE
    from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc

    target = args.addr if not args.addr.startswith(":") else f"localhost{args.addr}"
    with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.timeout)
        except grpc.FutureTimeoutError:
            print(f"timeout: failed to connect to {args.addr} within {args.timeout}s", file=sys.stderr)
            return PROBE_CONNECTION_FAILURE
        stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
        try:
            resp = stub.GetConditions(
                diagnostics_pb2.ConditionsRequest(prefix=args.prefix), timeout=args.timeout
            )
        except grpc.RpcError as exc:
            print(
                f"error: diagnostics rpc failed: {exc.code().name}: {exc.details()}",
                file=sys.stderr,
            )
            return PROBE_RPC_FAILURE
    if args.json:
        from sidecar.publish.diagnostics import document_parts
        from sidecar.publish.http import healthz_document

        # the /healthz document, built by the same functions
        ready, services, checks = document_parts(resp)
        print(healthz_document("trt-health-sidecar", ready, services, checks).decode())
        return 0
    print(render_status(resp))
    return 0


def _canary_labels(target: str, timeout: float) -> dict[str, str]:
    """The labels of a sidecar's ``canary`` condition (its digest and consistency key)."""
    import grpc

    from sidecar.proto import diagnostics_pb2, diagnostics_pb2_grpc

    address = target if not target.startswith(":") else f"localhost{target}"
    with grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = diagnostics_pb2_grpc.DiagnosticsStub(channel)
        resp = stub.GetConditions(diagnostics_pb2.ConditionsRequest(prefix="canary"), timeout=timeout)
    for c in resp.conditions:
        if c.name == "canary":
            return dict(c.labels)
    return {}


def cmd_peers(args: argparse.Namespace) -> int:
    """Exit 0: agrees with (or cannot be compared to) its peers; 4: an outlier; 2/3: this
    sidecar could not be asked. Peers that cannot be asked are listed, never counted."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from sidecar.canary.consistency import PeerReport, compare_with_peers, report_from_labels
    from sidecar.core.errors import PROBE_CONNECTION_FAILURE, PROBE_RPC_FAILURE, PROBE_UNHEALTHY

    if len(args.peers) > 64:
        print("error: at most 64 peers", file=sys.stderr)
        return 1
    try:
        own = report_from_labels(args.addr, _canary_labels(args.addr, args.timeout))
    except grpc.RpcError as exc:
        code = exc.code()
        print(f"error: {args.addr}: {code.name}: {exc.details()}", file=sys.stderr)
        return PROBE_CONNECTION_FAILURE if code is grpc.StatusCode.UNAVAILABLE else PROBE_RPC_FAILURE
    if own.key is None:
        print(f"error: {args.addr}: {own.error}", file=sys.stderr)
        return PROBE_RPC_FAILURE

    def ask(peer: str) -> PeerReport:
        try:
            return report_from_labels(peer, _canary_labels(peer, args.timeout))
        except grpc.RpcError as exc:
            return PeerReport(peer, error=exc.code().name)

    with ThreadPoolExecutor(max_workers=min(16, len(args.peers))) as pool:
        reports = list(pool.map(ask, args.peers))
    verdict = compare_with_peers(own.key, own.digest, reports)
    doc = {
        "digest": own.digest,
        "key": own.key.labels(),
        "comparable": verdict.comparable,
        "agreeing": verdict.agreeing,
        "agreement": round(verdict.agreement, 4),
        "majority_digest": verdict.majority_digest,
        "outlier": verdict.outlier,
        "skipped": list(verdict.skipped),
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        state = "OUTLIER" if verdict.outlier else "consistent"
        print(
            f"{args.addr}: digest {own.digest}, {verdict.agreeing} of {verdict.comparable} comparable "
            f"peers agree (majority {verdict.majority_digest}): {state}"
        )
        for line in verdict.skipped:
            print(f"  skipped {line}")
    return PROBE_UNHEALTHY if verdict.outlier else 0


def render_status(resp: Any) -> str:
    """Human table: services, then conditions with reason and message."""
    import time

    lines = [f"trt-health-sidecar {resp.version}{'  (SIMULATED)' if resp.simulated else ''}", ""]
    lines.append(f"{'SERVICE':<40} {'STATUS':<12} REASONS")
    for s in resp.services:
        label = s.name or '"" (overall)'
        lines.append(f"{label:<40} {'SERVING' if s.serving else 'NOT_SERVING':<12} {'; '.join(s.reasons)}")
    lines += ["", f"{'CONDITION':<44} {'STATE':<10} {'SEVERITY':<9} {'SINCE':>8}  REASON: MESSAGE"]
    now = time.time()
    for c in resp.conditions:
        est = {0: "pending", 1: "healthy", 2: "UNHEALTHY"}.get(int(c.established), "?")
        if c.gating:
            est = "GATING" if est != "pending" else "pending"
        since = _ago(now - c.since_unix)
        reason = f"{c.reason}: {c.message}" if c.reason else c.message
        lines.append(f"{c.name:<44} {est:<10} {c.severity:<9} {since:>8}  {reason}")
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "serve":
        # before anything slow: a SIGTERM/SIGINT during start-up exits 0, not 143 / 130
        from sidecar.runtime import stopsignals

        stopsignals.install()
    if argv and argv[0] == "probe":
        from sidecar.probe import main as probe_main

        return probe_main(argv[1:])
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the (sub)command that got them, with its usage
        _innermost(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code = _dispatch(parser, args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # `status | head`: the reader had enough. Exit quietly, as Unix tools do.
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # the documented code for a bug, with the reason
        import traceback

        traceback.print_exc()
        print(f"trt-health-sidecar: internal error: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "status":
        return cmd_status(args)
    if args.command == "peers":
        return cmd_peers(args)
    if args.command == "engine":
        from sidecar.engine.cli import run_engine_command

        return int(run_engine_command(args))
    if args.command == "webhook":
        from sidecar.webhook import run_webhook

        return int(run_webhook(args))
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def _innermost(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` selected, e.g. ``engine inspect``'s."""
    current = parser
    while True:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            return current
        chosen = getattr(args, actions[0].dest or "", None)
        nested = actions[0].choices.get(chosen) if chosen is not None else None
        if not isinstance(nested, argparse.ArgumentParser):
            return current
        current = nested


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
