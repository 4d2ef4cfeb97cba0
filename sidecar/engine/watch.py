"""Notice engine file changes: inotify on local volumes, stat polling on NFS / FUSE.

The engine's side of the one file watcher, :mod:`sidecar.runtime.watch` (``engines.watch:
auto | inotify | poll``). inotify watches the *folders* holding the files, so an atomic rename
(``mv new plan``), an in-place rewrite, a deletion and a Kubernetes ``..data`` symlink swap are
all seen. It is useless on network and FUSE file systems (changes made by other clients raise
no event), so ``auto`` picks polling there, and falls back to polling whenever inotify cannot
start. The watcher only says "this path may have changed": the verification decides what
changed.
"""

from __future__ import annotations

from sidecar.runtime.watch import (
    WATCH_MODES,
    ChangeCallback,
    FileWatcher,
    InotifyWatcher,
    PollWatcher,
    choose_watcher,
    filesystem_type,
    is_network_fs,
)

__all__ = [
    "WATCH_MODES",
    "ChangeCallback",
    "FileWatcher",
    "InotifyWatcher",
    "PollWatcher",
    "choose_watcher",
    "filesystem_type",
    "is_network_fs",
]
