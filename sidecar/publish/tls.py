"""TLS / mTLS server credentials that pick up renewed certificate files without a restart.

grpcio's dynamic credentials call the fetcher on every new handshake; it returns a new
certificate configuration only when one of the files changed (stat), so rotation by
cert-manager or a mounted Secret takes effect for new connections at once.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import grpc

from sidecar.core.errors import TlsMaterialError

log = logging.getLogger(__name__)


class TlsCredentialsWatcher:
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
        self._stamp: tuple[Any, ...] | None = None
        self._lock = threading.Lock()
        self.reloads = 0

    def _files(self) -> list[str]:
        return [f for f in (self.cert_file, self.key_file, self.client_ca_file) if f]

    def _current_stamp(self) -> tuple[Any, ...]:
        out: list[tuple[Any, ...]] = []
        for f in self._files():
            try:
                st = os.stat(f)
                out.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((f, None))
        return tuple(out)

    def _read(self) -> Any:
        try:
            with open(self.cert_file, "rb") as fh:
                cert = fh.read()
            with open(self.key_file, "rb") as fh:
                key = fh.read()
            ca = None
            if self.client_ca_file:
                with open(self.client_ca_file, "rb") as fh:
                    ca = fh.read()
        except OSError as exc:
            raise TlsMaterialError(f"{exc.filename}: {exc.strerror}") from exc
        if b"-----BEGIN" not in cert or b"-----BEGIN" not in key:
            raise TlsMaterialError(f"{self.cert_file} / {self.key_file}: not PEM")
        if ca is not None and b"-----BEGIN" not in ca:
            raise TlsMaterialError(f"{self.client_ca_file}: not PEM")
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for add_secure_port. Raises TlsMaterialError when the files are bad."""
        initial = self._read()
        self._stamp = self._current_stamp()
        return grpc.dynamic_ssl_server_credentials(
            initial,
            self._fetch,
            require_client_authentication=self.require_client_cert,
        )

    def _fetch(self) -> Any:
        """Called by grpc on each handshake: a new configuration only when files changed."""
        with self._lock:
            stamp = self._current_stamp()
            if stamp == self._stamp:
                return None
            try:
                config = self._read()
            except TlsMaterialError as exc:
                # keep serving with the previous certificate; report once per change
                log.error("TLS material reload failed, keeping the old", extra={"error": str(exc)})
                self._stamp = stamp
                return None
            self._stamp = stamp
            self.reloads += 1
            log.info("TLS material reloaded", extra={"cert_file": self.cert_file})
            return config
