"""TLS for the probe: the files of ``-tls-ca-cert`` / ``-tls-client-*``, and for ``-tls-no-verify``
the certificates the server presents (fetched over a handshake that verifies nothing) and a name
taken from the leaf to verify them against.

``ssl`` and ``cryptography`` are imported only when a TLS probe runs (start-up cost).
"""

from __future__ import annotations

import os
import time
from typing import Any

from sidecar.probe.flags import ProbeOptions

__all__ = [
    "TlsMaterial",
    "TlsSetupError",
    "certificate_names",
    "fetch_server_chain",
    "name_for_no_verify",
    "socket_address",
    "tls_material",
    "trust_presented",
]

TlsMaterial = tuple[bytes | None, bytes | None, bytes | None]
"""(root certificates, client key, client certificate chain), as ``grpc.ssl_channel_credentials``
takes them."""


def socket_address(addr: str) -> tuple[int, Any, str | None]:
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


def fetch_server_chain(opts: ProbeOptions, deadline: float) -> list[bytes]:
    """DER certificates the server presents, from a handshake that verifies nothing.

    Retries (like a blocking dial) until it succeeds or ``deadline`` passes; the last error is
    raised as ``TimeoutError``.
    """
    import socket
    import ssl

    family, address, sni = socket_address(opts.addr)
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


def certificate_names(der: bytes) -> tuple[list[str], list[str], str | None]:
    """(DNS SANs, IP SANs, subject CN) of a DER certificate; raises ``ValueError`` if malformed."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(cns[-1].value) if cns else None
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return [], [], cn
        dns = list(san.get_values_for_type(x509.DNSName))
        ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        return dns, ips, cn
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise ValueError(f"cannot parse the server certificate: {exc}") from exc


def name_for_no_verify(der: bytes) -> str | None:
    """The name to verify a presented leaf against: a DNS SAN (a wildcard filled in), else an IP
    SAN, else the subject CN."""
    dns, ips, cn = certificate_names(der)
    for name in dns:
        return name.replace("*", "probe", 1) if name.startswith("*.") else name
    if ips:
        return ips[0]
    return cn


class TlsSetupError(Exception):
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


def tls_material(opts: ProbeOptions) -> TlsMaterial:
    """(root certs, client key, client cert chain) from the files; raises TlsSetupError."""
    key = chain = None
    if opts.tls_client_cert and opts.tls_client_key:
        import ssl

        try:
            # load_cert_chain also proves the key matches the certificate, as tls.LoadX509KeyPair.
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(opts.tls_client_cert, opts.tls_client_key)
            chain = _read_file(opts.tls_client_cert)
            key = _read_file(opts.tls_client_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsSetupError(f"failed to load tls client cert/key pair. error={_describe(exc)}") from exc
    roots: bytes | None = None
    if opts.tls_ca_cert:
        try:
            roots = _read_file(opts.tls_ca_cert)
        except OSError as exc:
            raise TlsSetupError(
                f"failed to load root CA certificates from file ({opts.tls_ca_cert}) error={_describe(exc)}"
            ) from exc
        if b"-----BEGIN CERTIFICATE-----" not in roots:
            raise TlsSetupError(f"no root CA certs parsed from file {opts.tls_ca_cert}")
    elif not opts.tls_no_verify:
        roots = _system_roots()
    return roots, key, chain


def _describe(exc: BaseException) -> str:
    """An error worded as Go's ``os.Open`` words it (``open PATH: no such file or directory``)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"open {exc.filename}: {exc.strerror.lower()}"
    return str(exc) or type(exc).__name__


def trust_presented(opts: ProbeOptions, deadline: float) -> tuple[bytes, str | None]:
    """For ``-tls-no-verify``: (PEM roots that are exactly the certificates the server presents,
    the name to verify them against); raises ``OSError`` / ``TimeoutError`` / ``ValueError``
    when they cannot be fetched or read before ``deadline``."""
    import ssl

    presented = fetch_server_chain(opts, deadline)
    roots = "".join(ssl.DER_cert_to_PEM_cert(d) for d in presented).encode()
    return roots, name_for_no_verify(presented[0])
