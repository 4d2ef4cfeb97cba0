"""What every ``engine ...`` command shares: the exit codes and the usage error."""

from __future__ import annotations

from sidecar.core.errors import SidecarError

__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "UsageError"]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2


class UsageError(SidecarError):
    """Bad command-line input; the message names the flag."""
