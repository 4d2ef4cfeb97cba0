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

Parts: :mod:`~sidecar.probe.flags` (Go ``flag`` parsing and validation),
:mod:`~sidecar.probe.gofmt` (Go-style durations and errors), :mod:`~sidecar.probe.wire` (the
health messages and the Check call), :mod:`~sidecar.probe.tls` (TLS files, ``-tls-no-verify``),
:mod:`~sidecar.probe.interrupts` (SIGINT / SIGTERM), :mod:`~sidecar.probe.main` (the entry point).
"""

from __future__ import annotations

from sidecar.probe.flags import ProbeArgError, ProbeOptions, parse_args, usage_text
from sidecar.probe.gofmt import format_go_duration
from sidecar.probe.main import main, run_probe
from sidecar.probe.tls import certificate_names
from sidecar.probe.wire import (
    SERVING,
    SERVING_STATUS_NAMES,
    decode_check_response,
    encode_check_request,
)

__all__ = [
    "SERVING",
    "SERVING_STATUS_NAMES",
    "ProbeArgError",
    "ProbeOptions",
    "certificate_names",
    "decode_check_response",
    "encode_check_request",
    "format_go_duration",
    "main",
    "parse_args",
    "run_probe",
    "usage_text",
]
