"""``probe``: a drop-in replacement for ``grpc_health_probe`` written on grpcio.

For images and clusters without the Go binary or native gRPC probes. It accepts the same flags
with Go ``flag`` syntax (``-flag value``, ``-flag=value``, ``--flag``, booleans as ``-tls`` or
``-tls=false``), prints the same messages to stderr, and returns the same exit codes:

====  =====================================================================================
code  meaning
====  =====================================================================================
0     the service answered ``SERVING`` (or ``-version``)
1     invalid arguments: flag parse error, ``-h``, failed validation, unusable TLS files,
      ``-alts`` / ``-spiffe`` (not supported here)
2     could not connect within ``-connect-timeout`` (refused, TLS failure, ...), or SIGINT /
      SIGTERM while connecting
3     the Check RPC failed: ``UNIMPLEMENTED``, ``DEADLINE_EXCEEDED``, ``NOT_FOUND`` (unknown
      service) or any other error, or SIGINT / SIGTERM during the RPC
4     the RPC succeeded but the status is not ``SERVING``
====  =====================================================================================

Start-up cost matters (an exec probe forks this every period), so the module imports only the
standard library at load time; ``grpc`` is imported when a probe runs, ``ssl`` only with ``-tls``,
and the two health messages are encoded by hand (protobuf is never imported).

Differences from the Go tool, on purpose or because grpcio cannot do otherwise:

- ``-tls-no-verify``: grpcio has no "skip verification" switch. The probe first opens its own TLS
  connection with verification off, takes the certificates the server presents, and then makes
  the gRPC channel trust exactly those certificates, overriding the verified name with one taken
  from the leaf certificate (a DNS SAN, else an IP SAN, else the subject CN). So whatever the
  server presents is trusted, as with Go's ``InsecureSkipVerify``, with two honest differences:
  an expired or not-yet-valid certificate still fails the connect phase (exit 2; tested), and a
  server that switches certificates between the two connections fails it too. Both handshakes
  count against ``-connect-timeout``.
- HTTP proxies are disabled for the probe's channel (``grpc.enable_http_proxy=0``): a probe dials a
  local or pod address, and honouring ``http_proxy`` / ``https_proxy`` sends ``-addr=:port`` through
  the proxy because ``no_proxy=localhost`` does not match an empty host
  (grpc-ecosystem/grpc-health-probe#153).
- Without ``-tls-ca-cert`` the system CA bundle (``SSL_CERT_FILE`` or OpenSSL's default file) is
  trusted, like Go's system roots; grpcio's bundled roots are used only if none is found.
- The user agent really sent is ``<-user-agent> grpc-python/<version> ...`` (grpc-go likewise
  appends its own token).
- ``-alts`` and ``-spiffe`` are parsed and validated like the Go tool, then refused with exit 1.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, TextIO

from sidecar.configfields import parse_go_duration
from sidecar.core.errors import (
    PROBE_CONNECTION_FAILURE,
    PROBE_INVALID_ARGUMENTS,
    PROBE_OK,
    PROBE_RPC_FAILURE,
    PROBE_UNHEALTHY,
)

__all__ = [
    "ProbeArgError",
    "ProbeOptions",
    "decode_check_response",
    "encode_check_request",
    "format_go_duration",
    "main",
    "parse_args",
    "run_probe",
    "usage_text",
]

PROG = "trt-health-sidecar probe"
DEFAULT_USER_AGENT = "grpc_health_probe"
CHECK_METHOD = "/grpc.health.v1.Health/Check"


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


# --------------------------------------------------------------------------- Go-style output


def format_go_duration(seconds: float) -> str:
    """Format like Go's ``time.Duration.String``: ``1s``, ``500ms``, ``1m30s``, ``1.5µs``."""
    return _format_ns(round(seconds * 1e9))


def _frac(v: int, prec: int) -> tuple[int, str]:
    q, r = divmod(v, 10**prec)
    if r == 0:
        return q, ""
    return q, "." + f"{r:0{prec}d}".rstrip("0")


def _format_ns(ns: int) -> str:
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    u = abs(ns)
    if u < 1_000_000_000:
        if u < 1_000:
            unit, prec = "ns", 0
        elif u < 1_000_000:
            unit, prec = "µs", 3
        else:
            unit, prec = "ms", 6
        q, frac = _frac(u, prec)
        return f"{sign}{q}{frac}{unit}"
    secs, frac = _frac(u, 9)
    out = f"{secs % 60}{frac}s"
    minutes = secs // 60
    if minutes:
        out = f"{minutes % 60}m{out}"
        hours = minutes // 60
        if hours:
            out = f"{hours}h{out}"
    return sign + out


_GO_CODE_NAMES = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}


def _go_status_error(code_name: str, details: str) -> str:
    """A gRPC error as grpc-go prints it: ``rpc error: code = NotFound desc = unknown service``."""
    return f"rpc error: code = {_GO_CODE_NAMES.get(code_name, code_name)} desc = {details}"


def _go_headers(headers: Sequence[tuple[str, str]]) -> str:
    md: dict[str, list[str]] = {}
    for k, v in headers:
        md.setdefault(k.lower(), []).append(v)
    inner = " ".join(f"{k}:[{' '.join(vs)}]" for k, vs in sorted(md.items()))
    return f"map[{inner}]"


# --------------------------------------------------------------------------- wire format

# grpc.health.v1 messages, encoded by hand: importing protobuf and the generated module costs about
# 20 ms, a sixth of a probe's wall time. A unit test checks these against grpc_health's health_pb2.
SERVING = 1
SERVING_STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def encode_check_request(service: str) -> bytes:
    """``HealthCheckRequest{service}`` in protobuf wire format (proto3 omits an empty string)."""
    raw = service.encode("utf-8")
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def decode_check_response(data: bytes) -> int:
    """The ``status`` of a ``HealthCheckResponse`` (0 when absent); unknown fields skipped.

    Raises ``ValueError`` on malformed input (grpcio turns it into an INTERNAL error: exit 3).
    """
    status = 0
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field_no, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field_no == 1:
                status = value - (1 << 64) if value >= 1 << 63 else value  # int32 enum
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
    return status


# --------------------------------------------------------------------------- running the probe


class _Cancelled(Exception):
    """Raised from the SIGINT / SIGTERM handler to abandon the phase in progress."""


_SIGNAL_NAMES = {signal.SIGINT: "interrupt", signal.SIGTERM: "terminated"}


class _Interrupts:
    """Turns SIGINT / SIGTERM into :class:`_Cancelled` while a phase is in progress.

    Like the Go tool's cancelled root context: a signal while connecting fails the dial (exit 2),
    during the RPC fails the RPC (exit 3), and one that arrives between phases makes the next
    phase fail at once. Handlers are installed only on the main thread and restored afterwards,
    so calling :func:`main` in-process leaves the host's handlers as they were.
    """

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self.received: str | None = None
        self.armed = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        self.armed = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = _SIGNAL_NAMES.get(signal.Signals(signum), str(signum))
            self._log(f"cancellation received (signal: {self.received})")
        if self.armed:
            self.armed = False
            raise _Cancelled(self.received)

    def arm(self) -> None:
        """Enter a cancellable phase; fails at once if a signal already arrived."""
        if self.received is not None:
            raise _Cancelled(self.received)
        self.armed = True

    def disarm(self) -> None:
        self.armed = False


def _grpc_target(addr: str) -> str:
    """grpc-go dials ``:port`` on the local host; grpc core needs the host spelled out."""
    if addr.startswith(":") and addr[1:].isdigit():
        return "localhost" + addr
    return addr


def _socket_address(addr: str) -> tuple[int, Any, str | None]:
    """(family, address, SNI name) for a raw socket to ``addr`` (used by ``-tls-no-verify``)."""
    import socket

    target = addr
    if target.startswith("unix:"):
        path = target[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        return socket.AF_UNIX, path, None
    if target.startswith("unix-abstract:"):
        return socket.AF_UNIX, "\0" + target[len("unix-abstract:") :], None
    for scheme in ("dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            if target.startswith("//"):  # dns://authority/host:port
                target = target[2:].partition("/")[2]
            target = target.split(",")[0]
            break
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else "443"
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    elif ":" in target:  # bare IPv6 literal without a port
        host, port = target, "443"
    else:
        host, port = target, "443"
    host = host or "localhost"
    is_ip = host.replace(".", "").isdigit() or ":" in host
    return socket.AF_UNSPEC, (host, int(port)), None if is_ip else host


def _fetch_server_chain(opts: ProbeOptions, deadline: float) -> list[bytes]:
    """DER certificates the server presents, from a handshake that verifies nothing.

    Retries (like a blocking dial) until it succeeds or ``deadline`` passes; the last error is
    raised as ``TimeoutError``.
    """
    import socket
    import ssl

    family, address, sni = _socket_address(opts.addr)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    if opts.tls_client_cert:
        ctx.load_cert_chain(opts.tls_client_cert, opts.tls_client_key)
    delay = 0.02
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline exceeded while fetching the server certificate")
        try:
            if family == socket.AF_UNIX:
                raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                raw.settimeout(remaining)
                raw.connect(address)
            else:
                raw = socket.create_connection(address, timeout=remaining)
            with ctx.wrap_socket(raw, server_hostname=sni) as tls_sock:
                chain_fn = getattr(getattr(tls_sock, "_sslobj", None), "get_unverified_chain", None)
                chain = chain_fn() if chain_fn is not None else None
                if chain:
                    return [ssl.PEM_cert_to_DER_cert(c.public_bytes()) for c in chain]
                leaf = tls_sock.getpeercert(binary_form=True)
                if leaf:
                    return [leaf]
                raise ssl.SSLError("server presented no certificate")
        except (OSError, ssl.SSLError):
            if deadline - time.monotonic() <= delay:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


# Minimal DER reading: just enough to pull the names out of a certificate for -tls-no-verify.


def _der_read(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the TLV at ``pos``."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    return tag, pos, pos + length


def _der_children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    pos = start
    while pos < end:
        tag, s, e = _der_read(data, pos)
        out.append((tag, s, e))
        pos = e
    return out


_OID_CN = bytes([0x55, 0x04, 0x03])  # 2.5.4.3
_OID_SAN = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17


def certificate_names(der: bytes) -> tuple[list[str], list[str], str | None]:
    """(DNS SANs, IP SANs, subject CN) of a DER certificate; raises ``ValueError`` if malformed."""
    import ipaddress

    try:
        _, cs, ce = _der_read(der, 0)
        _, ts, te = _der_children(der, cs, ce)[0]
        tbs = _der_children(der, ts, te)
        i = 1 if tbs[0][0] == 0xA0 else 0  # optional [0] version
        subject = tbs[i + 4]
        cn: str | None = None
        for _, rs, re_ in _der_children(der, subject[1], subject[2]):  # RDN SETs
            for _, as_, ae in _der_children(der, rs, re_):  # AttributeTypeAndValue
                (_, os_, oe), (_, vs, ve) = _der_children(der, as_, ae)[:2]
                if der[os_:oe] == _OID_CN:
                    cn = der[vs:ve].decode("utf-8", "replace")
        dns: list[str] = []
        ips: list[str] = []
        for tag, s, _e in tbs[i + 6 :]:
            if tag != 0xA3:  # [3] extensions
                continue
            _, xs, xe = _der_read(der, s)
            for _, es, ee in _der_children(der, xs, xe):
                parts = _der_children(der, es, ee)
                if der[parts[0][1] : parts[0][2]] != _OID_SAN:
                    continue
                _, vs, ve = parts[-1]  # OCTET STRING wrapping GeneralNames
                _, gs, ge = _der_read(der, vs)
                for gtag, ns, ne in _der_children(der, gs, ge):
                    if gtag == 0x82:  # [2] dNSName
                        dns.append(der[ns:ne].decode("ascii", "replace"))
                    elif gtag == 0x87:  # [7] iPAddress
                        ips.append(str(ipaddress.ip_address(der[ns:ne])))
        return dns, ips, cn
    except (IndexError, ValueError) as exc:
        raise ValueError(f"cannot parse the server certificate: {exc}") from exc


def _name_for_no_verify(der: bytes) -> str | None:
    dns, ips, cn = certificate_names(der)
    for name in dns:
        return name.replace("*", "probe", 1) if name.startswith("*.") else name
    if ips:
        return ips[0]
    return cn


class _TlsSetupError(Exception):
    """TLS files unusable: exit 1, message as the Go tool words it."""


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _system_roots() -> bytes | None:
    import ssl

    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            try:
                return _read_file(candidate)
            except OSError:
                continue
    return None  # grpcio falls back to its bundled roots


def _tls_material(opts: ProbeOptions) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(root certs, client key, client cert chain) from the files; raises _TlsSetupError."""
    key = chain = None
    if opts.tls_client_cert and opts.tls_client_key:
        import ssl

        try:
            # load_cert_chain also proves the key matches the certificate, as tls.LoadX509KeyPair.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(opts.tls_client_cert, opts.tls_client_key)
            chain = _read_file(opts.tls_client_cert)
            key = _read_file(opts.tls_client_key)
        except (OSError, ssl.SSLError) as exc:
            raise _TlsSetupError(f"failed to load tls client cert/key pair. error={_describe(exc)}") from exc
    roots: bytes | None = None
    if opts.tls_ca_cert:
        try:
            roots = _read_file(opts.tls_ca_cert)
        except OSError as exc:
            raise _TlsSetupError(
                f"failed to load root CA certificates from file ({opts.tls_ca_cert}) error={_describe(exc)}"
            ) from exc
        if b"-----BEGIN CERTIFICATE-----" not in roots:
            raise _TlsSetupError(f"no root CA certs parsed from file {opts.tls_ca_cert}")
    elif not opts.tls_no_verify:
        roots = _system_roots()
    return roots, key, chain


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"open {exc.filename}: {exc.strerror.lower()}"
    return str(exc) or type(exc).__name__


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
            log(f"> headers: {_go_headers(opts.rpc_headers)}")
        log(f"> tls={str(opts.tls).lower()}")
        if opts.tls:
            log(f"  > no-verify={str(opts.tls_no_verify).lower()} ")
            log(f"  > ca-cert={opts.tls_ca_cert}")
            log(f"  > client-cert={opts.tls_client_cert}")
            log(f"  > client-key={opts.tls_client_key}")
            log(f"  > server-name={opts.tls_server_name}")
        log(f"> alts={str(opts.alts).lower()}")
        log(f"> spiffe={str(opts.spiffe).lower()}")

    tls_parts: tuple[bytes | None, bytes | None, bytes | None] | None = None
    if opts.tls:
        try:
            tls_parts = _tls_material(opts)
        except _TlsSetupError as exc:
            log(f"failed to initialize tls credentials. error={exc}")
            return PROBE_INVALID_ARGUMENTS

    if not opts.verbose:
        # grpc core logs handshake failures itself; the Go tool prints only its own lines.
        # With -v they stay: they say *why* a connect timed out (grpc_health_probe#158).
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    with _Interrupts(log) as interrupts:
        return _probe(opts, tls_parts, interrupts, log, close_channel)


def _probe(
    opts: ProbeOptions,
    tls_parts: tuple[bytes | None, bytes | None, bytes | None] | None,
    interrupts: _Interrupts,
    log: Callable[[str], None],
    close_channel: bool,
) -> int:
    import grpc

    target = _grpc_target(opts.addr)
    options: list[tuple[str, Any]] = [
        ("grpc.primary_user_agent", opts.user_agent),
        ("grpc.enable_http_proxy", 0),  # see the module docstring (grpc_health_probe#153)
        ("grpc.enable_retries", 0),  # one Check, no retry, like the Go tool
    ]
    if opts.verbose:
        log("establishing connection")
    conn_start = time.perf_counter_ns()
    deadline = time.monotonic() + opts.connect_timeout
    channel = None
    try:
        interrupts.arm()
        if tls_parts is not None:
            roots, key, chain = tls_parts
            if opts.tls_no_verify:
                presented = _fetch_server_chain(opts, deadline)
                import ssl

                roots = "".join(ssl.DER_cert_to_PEM_cert(d) for d in presented).encode()
                name = _name_for_no_verify(presented[0])
                if name:
                    options.append(("grpc.ssl_target_name_override", name))
            elif opts.tls_server_name:
                options.append(("grpc.ssl_target_name_override", opts.tls_server_name))
            creds = grpc.ssl_channel_credentials(
                root_certificates=roots, private_key=key, certificate_chain=chain
            )
            channel = grpc.secure_channel(target, creds, options=options)
        else:
            channel = grpc.insecure_channel(target, options=options)
        grpc.channel_ready_future(channel).result(timeout=max(deadline - time.monotonic(), 0.001))
        interrupts.disarm()
    except (grpc.FutureTimeoutError, TimeoutError, OSError, ValueError):
        interrupts.disarm()
        log(
            f'timeout: failed to connect service "{opts.addr}" within '
            f"{format_go_duration(opts.connect_timeout)}"
        )
        _close(channel, close_channel)
        return PROBE_CONNECTION_FAILURE
    except _Cancelled:
        log(f'error: failed to connect service at "{opts.addr}": context canceled')
        _close(channel, close_channel)
        return PROBE_CONNECTION_FAILURE
    conn_ns = time.perf_counter_ns() - conn_start
    if opts.verbose:
        log(f"connection established (took {_format_ns(conn_ns)})")

    metadata = [(k.lower(), v.encode() if k.lower().endswith("-bin") else v) for k, v in opts.rpc_headers]
    check = channel.unary_unary(
        CHECK_METHOD,
        request_serializer=encode_check_request,
        response_deserializer=decode_check_response,
    )
    rpc_start = time.perf_counter_ns()
    call = None
    try:
        interrupts.arm()
        call = check.future(
            opts.service,
            timeout=opts.rpc_timeout,
            metadata=metadata or None,
            compression=grpc.Compression.Gzip if opts.gzip else None,
        )
        resp = call.result()
        interrupts.disarm()
    except _Cancelled:
        if call is not None:
            call.cancel()
        log(f"error: health rpc failed: {_go_status_error('CANCELLED', 'context canceled')}")
        _close(channel, close_channel)
        return PROBE_RPC_FAILURE
    except grpc.RpcError as exc:
        interrupts.disarm()
        code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
        details = (exc.details() if hasattr(exc, "details") else None) or ""
        if code == grpc.StatusCode.UNIMPLEMENTED:
            log(
                "error: this server does not implement the grpc health protocol "
                f"(grpc.health.v1.Health): {details}"
            )
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            log(f"timeout: health rpc did not complete within {format_go_duration(opts.rpc_timeout)}")
        else:
            log(f"error: health rpc failed: {_go_status_error(code.name, details)}")
        _close(channel, close_channel)
        return PROBE_RPC_FAILURE
    except (ValueError, TypeError) as exc:  # e.g. metadata grpcio refuses to send
        interrupts.disarm()
        log(f"error: health rpc failed: {_go_status_error('INTERNAL', str(exc))}")
        _close(channel, close_channel)
        return PROBE_RPC_FAILURE
    rpc_ns = time.perf_counter_ns() - rpc_start
    _close(channel, close_channel)

    status_name = SERVING_STATUS_NAMES.get(resp, str(resp))
    if resp != SERVING:
        log(f'service unhealthy (responded with "{status_name}")')
        return PROBE_UNHEALTHY
    if opts.verbose:
        log(f"time elapsed: connect={_format_ns(conn_ns)} rpc={_format_ns(rpc_ns)}")
    log(f"status: {status_name}")
    return PROBE_OK


def _close(channel: Any, really: bool) -> None:
    if channel is not None and really:
        channel.close()


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


if __name__ == "__main__":
    raise SystemExit(main())
