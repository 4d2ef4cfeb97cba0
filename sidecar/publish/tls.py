"""TLS server material that picks up renewed certificate files without a restart.

:class:`CertificateReloader` is the package's one certificate reloader: it holds what was built
from a set of PEM files and rebuilds it when their content changes, so rotation by cert-manager
or a mounted Secret takes effect for new connections. A look costs one ``stat`` per file (the
pull side of the one file watcher, :class:`sidecar.runtime.watch.Stamps`); the files are read,
and their content compared, only after a stat changed. Its users decide when to look:
:class:`TlsCredentialsWatcher` (the gRPC TLS port) on every new handshake, through grpcio's
dynamic credentials; the webhook from a thread of its own (``sidecar.webhook.server``).
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import os
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sidecar.core.errors import TlsMaterialError
from sidecar.runtime.watch import Stamps

if TYPE_CHECKING:
    import grpc

__all__ = ["CertificateReloader", "TlsCredentialsWatcher", "certificate_fingerprint"]

log = logging.getLogger(__name__)

T = TypeVar("T")


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 (hex) of the first certificate in ``pem``; empty when there is none."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode("ascii", "replace"))
    except (ValueError, binascii.Error):
        return ""
    return hashlib.sha256(der).hexdigest()


class CertificateReloader(Generic[T]):
    """The material ``build`` made from ``files``, made again when their content changes.

    ``build`` gets the files' bytes, in the order given (the first file is the certificate), and
    raises :class:`TlsMaterialError` when they do not make usable material. :meth:`load` is the
    first build; :meth:`check` rebuilds after a change. A change that does not build (e.g. the
    certificate renewed, its key not yet) or files that cannot be read keep the previous
    material; each such state is logged once (as a warning, on ``logger``), and the next change
    is tried again. ``reloads`` counts the rebuilds that took effect.
    """

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        build: Callable[[list[bytes]], T],
        *,
        logger: logging.Logger | None = None,
    ) -> None:
        if not files:
            raise ValueError("CertificateReloader needs at least the certificate file")
        self.files = tuple(os.fspath(f) for f in files)
        self.reloads = 0
        self._build = build
        self._log = logger or log
        self._lock = threading.Lock()
        self._stamps = Stamps(self.files)
        self._current: T | None = None
        self._seen = b""  # digest of the content last built from, or last refused
        self._unreadable = ""  # the error last logged for unreadable files

    def _read(self) -> tuple[list[bytes], bytes]:
        """The files' bytes and one digest of them all (this is how a change is noticed)."""
        contents: list[bytes] = []
        digest = hashlib.sha256()
        for path in self.files:
            with open(path, "rb") as fh:
                data = fh.read()
            contents.append(data)
            digest.update(len(data).to_bytes(8, "big") + data)
        return contents, digest.digest()

    def load(self) -> T:
        """The first build; raises :class:`TlsMaterialError` naming the file that failed."""
        self._stamps.mark()  # before the read: a change during it is seen by the next check
        try:
            contents, digest = self._read()
        except OSError as exc:
            raise TlsMaterialError(f"{exc.filename}: {exc.strerror}") from exc
        material = self._build(contents)
        with self._lock:
            self._current, self._seen = material, digest
        return material

    @property
    def current(self) -> T:
        """The material in use (the last that built); :class:`TlsMaterialError` before :meth:`load`."""
        with self._lock:
            if self._current is None:
                raise TlsMaterialError("TLS material not loaded")
            return self._current

    def check(self) -> bool:
        """Rebuild if the files' content changed; True when new material is now :attr:`current`."""
        with self._lock:  # handshakes may call this concurrently: one rebuild per change
            if not self._stamps.changed():
                return False
            try:
                contents, digest = self._read()
            except OSError as exc:
                if str(exc) != self._unreadable:
                    self._unreadable = str(exc)
                    self._log.warning("certificate files unreadable", extra={"error": str(exc)})
                return False
            self._unreadable = ""
            if digest == self._seen:
                return False
            self._seen = digest
            try:
                material = self._build(contents)
            except TlsMaterialError as exc:
                self._log.warning("new certificate does not load yet", extra={"error": str(exc)})
                return False
            self._current = material
            self.reloads += 1
        self._log.info(
            "certificate reloaded",
            extra={"cert": self.files[0], "sha256": certificate_fingerprint(contents[0])},
        )
        return True


class TlsCredentialsWatcher:
    """gRPC server credentials (TLS, or mTLS with a client CA) that follow the files.

    grpcio's dynamic credentials ask for a configuration on every new handshake; a new one is
    returned only when the files changed, so a renewed certificate serves the next connection.
    """

    def __init__(
        self,
        *,
        cert_file: str,
        key_file: str,
        client_ca_file: str = "",
        require_client_cert: bool = False,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self.require_client_cert = require_client_cert
        files = [cert_file, key_file] + ([client_ca_file] if client_ca_file else [])
        self.certs: CertificateReloader[Any] = CertificateReloader(files, self._configuration)

    @property
    def reloads(self) -> int:
        """How many renewed certificates took effect."""
        return self.certs.reloads

    def _configuration(self, contents: list[bytes]) -> Any:
        import grpc

        cert, key, *rest = contents
        ca = rest[0] if rest else None
        if b"-----BEGIN" not in cert or b"-----BEGIN" not in key:
            raise TlsMaterialError(f"{self.cert_file} / {self.key_file}: not PEM")
        if ca is not None and b"-----BEGIN" not in ca:
            raise TlsMaterialError(f"{self.client_ca_file}: not PEM")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for add_secure_port. Raises TlsMaterialError when the files are bad."""
        import grpc

        initial = self.certs.load()
        return grpc.dynamic_ssl_server_credentials(
            initial,
            self._fetch,
            require_client_authentication=self.require_client_cert,
        )

    def _fetch(self) -> Any:
        """Called by grpc on each handshake: a new configuration only when the files changed."""
        return self.certs.current if self.certs.check() else None
