"""The package's one certificate reloader (sidecar.publish.tls.CertificateReloader), driven by
hand: a change is noticed by content, a change that does not build keeps the old material, and
each failing state is logged once."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from sidecar.core.errors import TlsMaterialError
from sidecar.publish.tls import CertificateReloader

LOGGER = "test.cert_reloader"


def build(contents: list[bytes]) -> str:
    """Material for the test: the two files joined; 'bad' in either does not build."""
    cert, key = contents
    if b"bad" in cert or b"bad" in key:
        raise TlsMaterialError("pair does not match")
    return (cert + b"+" + key).decode()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(b"cert-1")
    key.write_bytes(b"key-1")
    return cert, key


def reloader(files: tuple[Path, Path]) -> CertificateReloader[str]:
    return CertificateReloader(list(files), build, logger=logging.getLogger(LOGGER))


def messages(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if r.name == LOGGER and r.getMessage() == text)


def test_load_builds_and_check_without_change_keeps_it(files: tuple[Path, Path]) -> None:
    """The first load builds the material; a check with unchanged files changes nothing."""
    certs = reloader(files)
    assert certs.load() == "cert-1+key-1"
    assert certs.check() is False
    assert certs.current == "cert-1+key-1" and certs.reloads == 0


def test_same_content_with_a_new_mtime_is_no_change(files: tuple[Path, Path]) -> None:
    """Files rewritten with the same bytes (a touch, a resync) do not rebuild."""
    certs = reloader(files)
    certs.load()
    cert, _ = files
    cert.write_bytes(b"cert-1")
    st = cert.stat()
    os.utime(cert, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert certs.check() is False and certs.reloads == 0


def test_changed_content_is_rebuilt_and_logged(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """New bytes in place (same size, same mtime possible) are noticed and served."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    certs = reloader(files)
    certs.load()
    cert, key = files
    cert.write_bytes(b"cert-2")
    key.write_bytes(b"key-2")
    assert certs.check() is True
    assert certs.current == "cert-2+key-2" and certs.reloads == 1
    assert messages(caplog, "certificate reloaded") == 1


def test_a_change_that_does_not_build_keeps_the_old_and_warns_once(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Renewed certificate, key not yet: the old material stays; the state is logged once; the
    key that follows makes the pair build."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    certs = reloader(files)
    certs.load()
    _, key = files
    key.write_bytes(b"bad-key")
    assert [certs.check() for _ in range(3)] == [False, False, False]
    assert certs.current == "cert-1+key-1" and certs.reloads == 0
    assert messages(caplog, "new certificate does not load yet") == 1
    key.write_bytes(b"key-2")
    assert certs.check() is True and certs.current == "cert-1+key-2"


def test_unreadable_files_keep_the_old_and_warn_once_per_outage(
    files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Removed files: the last good material stays, one warning per outage; files back with the
    same content are no reload."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    certs = reloader(files)
    certs.load()
    cert, _ = files
    cert.unlink()
    assert [certs.check() for _ in range(3)] == [False, False, False]
    assert messages(caplog, "certificate files unreadable") == 1
    cert.write_bytes(b"cert-1")
    assert certs.check() is False and certs.reloads == 0
    cert.unlink()
    assert certs.check() is False
    assert messages(caplog, "certificate files unreadable") == 2
    assert certs.current == "cert-1+key-1"


def test_load_names_the_missing_file_and_current_needs_a_load(tmp_path: Path) -> None:
    """A missing file at start-up is a TlsMaterialError naming it; nothing is current before."""
    certs = CertificateReloader([tmp_path / "missing.crt", tmp_path / "k"], build)
    with pytest.raises(TlsMaterialError, match="not loaded"):
        _ = certs.current
    with pytest.raises(TlsMaterialError, match=r"missing\.crt"):
        certs.load()
