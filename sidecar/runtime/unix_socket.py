"""Room for the gRPC Unix socket: a stale socket left by a dead process is removed, anything
else at the path is an error naming it."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

from sidecar.core.errors import BindError
from sidecar.engine.files import mode_kind


def remove_stale_socket(path: str) -> None:
    """Make room for our Unix socket at ``path``: remove only a *stale* socket (a socket
    file nobody listens on: connect() is refused). A live socket or anything else (a regular
    file, a folder...) is left alone and is a ``BindError`` naming the path."""

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BindError(f"grpc unix:{path}: cannot examine it: {exc.strerror or exc}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else mode_kind(st.st_mode)
        raise BindError(f"grpc unix:{path}: exists and is {kind}, not a socket; not removed")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: left by a process that died
    except OSError as exc:
        raise BindError(f"grpc unix:{path}: cannot tell whether it is in use: {exc}") from exc
    else:
        raise BindError(f"grpc unix:{path}: another process is listening on it")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
