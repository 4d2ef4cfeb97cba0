"""The certificate reloader looks with one stat per file: the files are read only after a change."""

from __future__ import annotations

import builtins
import os
from pathlib import Path
from typing import Any

import pytest

from sidecar.publish.tls import CertificateReloader
from sidecar.testing.certs import TestCA


def _settle(*files: Path) -> None:
    for f in files:
        old = f.stat().st_mtime_ns - 60 * 10**9
        os.utime(f, ns=(old, old))


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handshake's check of unchanged (settled) files opens none of them; a renewal is read
    and served."""
    ca = TestCA(tmp_path)
    server = ca.issue("server")
    _settle(server.cert, server.key)
    reloader = CertificateReloader([server.cert, server.key], lambda contents: contents[0])
    reloader.load()
    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    for _ in range(100):
        assert not reloader.check()
    assert opened == []
    renewed = ca.issue("server2")
    server.cert.write_bytes(renewed.cert.read_bytes())
    server.key.write_bytes(renewed.key.read_bytes())
    assert reloader.check()
    assert reloader.current == renewed.cert.read_bytes()
    assert str(server.cert) in opened
