"""The probe's flags, parsed with Go ``flag`` rules and validated in the Go tool's order.

``-flag value``, ``-flag=value``, ``--flag``; booleans as ``-tls`` or ``-tls=false``; parsing stops
at the first non-flag argument or at ``--``. Every refusal is a :class:`ProbeArgError` whose
message names the flag (exit 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.config import parse_go_duration
from sidecar.core.errors import PROBE_INVALID_ARGUMENTS
from sidecar.probe.gofmt import format_go_duration

__all__ = [
    "DEFAULT_USER_AGENT",
    "PROG",
    "ProbeArgError",
    "ProbeOptions",
    "parse_args",
    "usage_text",
]

PROG = "trt-health-sidecar probe"
DEFAULT_USER_AGENT = "grpc_health_probe"


@dataclass(frozen=True)
class ProbeOptions:
    """Parsed and validated ``probe`` flags (durations in seconds)."""

    addr: str = ""
    service: str = ""
    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = 1.0
    rpc_timeout: float = 1.0
    rpc_headers: tuple[tuple[str, str], ...] = ()
    tls: bool = False
    tls_no_verify: bool = False
    tls_ca_cert: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_name: str = ""
    alts: bool = False
    spiffe: bool = False
    gzip: bool = False
    verbose: bool = False
    version: bool = False


@dataclass(frozen=True)
class ProbeArgError:
    """Why the arguments were refused (always exit 1).

    ``message`` is printed to stderr (empty for ``-h``); ``show_usage`` adds the flag list after
    it, as Go's ``flag`` package does for parse errors and ``-h``.
    """

    message: str
    show_usage: bool = False
    exit_code: int = PROBE_INVALID_ARGUMENTS


# --------------------------------------------------------------------------- flag definitions


@dataclass(frozen=True)
class _Flag:
    name: str
    kind: str  # "string" | "duration" | "bool" | "value" (repeatable rpc-header)
    attr: str
    usage: str
    default_text: str = ""  # shown as "(default ...)" in the usage, Go style


_FLAGS: tuple[_Flag, ...] = (
    _Flag("addr", "string", "addr", "(required) tcp host:port to connect"),
    _Flag("service", "string", "service", 'service name to check (default: "")'),
    _Flag(
        "user-agent",
        "string",
        "user_agent",
        "user-agent header value of health check requests",
        f'"{DEFAULT_USER_AGENT}"',
    ),
    _Flag(
        "connect-timeout",
        "duration",
        "connect_timeout",
        "timeout for establishing connection",
        "1s",
    ),
    _Flag("rpc-timeout", "duration", "rpc_timeout", "timeout for health check rpc", "1s"),
    _Flag(
        "rpc-header",
        "value",
        "rpc_headers",
        "additional RPC headers in 'name: value' format. May specify more than one via multiple flags.",
    ),
    _Flag("tls", "bool", "tls", "use TLS (default: false, INSECURE plaintext transport)"),
    _Flag(
        "tls-no-verify",
        "bool",
        "tls_no_verify",
        "(with -tls) don't verify the certificate (INSECURE) presented by the server (default: false)",
    ),
    _Flag(
        "tls-ca-cert",
        "string",
        "tls_ca_cert",
        "(with -tls, optional) file containing trusted certificates for verifying server",
    ),
    _Flag(
        "tls-client-cert",
        "string",
        "tls_client_cert",
        "(with -tls, optional) client certificate for authenticating to the server "
        "(requires -tls-client-key)",
    ),
    _Flag(
        "tls-client-key",
        "string",
        "tls_client_key",
        "(with -tls) client private key for authenticating to the server (requires -tls-client-cert)",
    ),
    _Flag(
        "tls-server-name",
        "string",
        "tls_server_name",
        "(with -tls) override the hostname used to verify the server certificate",
    ),
    _Flag("alts", "bool", "alts", "use ALTS (not supported by this probe; exits 1)"),
    _Flag(
        "spiffe",
        "bool",
        "spiffe",
        "use SPIFFE to obtain mTLS credentials (not supported by this probe; exits 1)",
    ),
    _Flag(
        "gzip",
        "bool",
        "gzip",
        "use GZIPCompressor for requests and GZIPDecompressor for response (default: false)",
    ),
    _Flag("v", "bool", "verbose", "verbose logs"),
    _Flag("version", "bool", "version", "print the probe version and exit"),
)
_BY_NAME = {f.name: f for f in _FLAGS}
_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def usage_text() -> str:
    """The flag list, laid out like Go's ``flag.PrintDefaults`` (sorted by name)."""
    lines = [f"Usage of {PROG}:"]
    for f in sorted(_FLAGS, key=lambda x: x.name):
        head = f"  -{f.name}"
        if f.kind != "bool":
            head += f" {f.kind}"
        text = f.usage + (f" (default {f.default_text})" if f.default_text else "")
        # Go puts the usage of a one-letter flag on the same line.
        lines.append(f"{head}\t{text}" if len(head) <= 4 else f"{head}\n    \t{text}")
    return "\n".join(lines) + "\n"


def _parse_header(value: str) -> tuple[str, str] | None:
    key, sep, rest = value.partition(":")
    if not sep:
        return None
    return key, rest.lstrip()


def parse_args(argv: Sequence[str]) -> ProbeOptions | ProbeArgError:
    """Parse ``argv`` (without the program name) with Go ``flag`` rules, then validate.

    Returns the options, or a :class:`ProbeArgError` whose message names the offending flag.
    As in Go, parsing stops at the first non-flag argument or at ``--``; ``-h`` / ``-help`` give
    the usage and exit 1 (``flag.ContinueOnError``); ``-version`` skips validation.
    """
    values: dict[str, Any] = {}
    headers: list[tuple[str, str]] = []
    args = list(argv)
    while args:
        s = args[0]
        if len(s) < 2 or s[0] != "-":
            break
        num_minuses = 1
        if s[1] == "-":
            num_minuses = 2
            if len(s) == 2:  # "--" terminates the flags
                args.pop(0)
                break
        name = s[num_minuses:]
        if not name or name[0] in "-=":
            return ProbeArgError(f"bad flag syntax: {s}", show_usage=True)
        args.pop(0)
        name, eq, value = name.partition("=")
        has_value = bool(eq)
        flag = _BY_NAME.get(name)
        if flag is None:
            if name in ("h", "help"):
                return ProbeArgError("", show_usage=True)
            return ProbeArgError(f"flag provided but not defined: -{name}", show_usage=True)
        if flag.kind == "bool":
            if not has_value:
                value = "true"
            if value in _GO_TRUE:
                values[flag.attr] = True
            elif value in _GO_FALSE:
                values[flag.attr] = False
            else:
                return ProbeArgError(
                    f'invalid boolean value "{value}" for -{name}: parse error', show_usage=True
                )
            continue
        if not has_value:
            if not args:
                return ProbeArgError(f"flag needs an argument: -{name}", show_usage=True)
            value = args.pop(0)  # taken even when it starts with "-", as Go does
        if flag.kind == "duration":
            try:
                seconds = parse_go_duration(value) if value else None
            except (ValueError, IndexError):
                seconds = None
            if seconds is None:
                return ProbeArgError(
                    f'invalid value "{value}" for flag -{name}: parse error', show_usage=True
                )
            values[flag.attr] = seconds
        elif flag.kind == "value":
            header = _parse_header(value)
            if header is None:
                return ProbeArgError(
                    f'invalid value "{value}" for flag -{name}: invalid RPC header, '
                    f"expected 'key: value', got \"{value}\"",
                    show_usage=True,
                )
            headers.append(header)
        else:
            values[flag.attr] = value
    opts = ProbeOptions(rpc_headers=tuple(headers), **values)
    if opts.version:
        return opts
    problem = _validate(opts)
    if problem:
        return ProbeArgError(f"error: {problem}")
    return opts


def _validate(o: ProbeOptions) -> str | None:
    """The Go tool's checks, in its order; the first failure wins (each names its flag)."""
    if not o.addr:
        return "-addr not specified"
    if o.connect_timeout <= 0:
        return (
            f"-connect-timeout must be greater than zero (specified: {format_go_duration(o.connect_timeout)})"
        )
    if o.rpc_timeout <= 0:
        return f"-rpc-timeout must be greater than zero (specified: {format_go_duration(o.rpc_timeout)})"
    if o.alts and o.spiffe:
        return "-alts and -spiffe are mutually incompatible"
    if o.tls and o.alts:
        return "cannot specify -tls with -alts"
    if o.tls and o.spiffe:
        return "-tls and -spiffe are mutually incompatible"
    if not o.tls and o.tls_no_verify:
        return "specified -tls-no-verify without specifying -tls"
    if not o.tls and o.tls_ca_cert:
        return "specified -tls-ca-cert without specifying -tls"
    if not o.tls and o.tls_client_cert:
        return "specified -tls-client-cert without specifying -tls"
    if not o.tls and o.tls_server_name:
        return "specified -tls-server-name without specifying -tls"
    if o.tls_client_cert and not o.tls_client_key:
        return "specified -tls-client-cert without specifying -tls-client-key"
    if not o.tls_client_cert and o.tls_client_key:
        return "specified -tls-client-key without specifying -tls-client-cert"
    if o.tls_no_verify and o.tls_ca_cert:
        return "cannot specify -tls-ca-cert with -tls-no-verify (CA cert would not be used)"
    if o.tls_no_verify and o.tls_server_name:
        return "cannot specify -tls-server-name with -tls-no-verify (server name would not be used)"
    return None
