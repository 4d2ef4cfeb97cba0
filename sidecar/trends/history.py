"""The trends' I/O edge: the detectors' history in ``state_dir/trends.json`` (bounded, written
atomically). Blocking: the component calls it off the event loop."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("sidecar.trends.component")  # the name these lines always had

MAX_STATE_BYTES = 256 * 1024


class TrendHistory:
    """Reads and writes one JSON document; a failure is logged (once per streak of failed
    writes), never raised: trends are advisory, losing history is not fatal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._write_failing = False

    def read(self) -> Any:
        """The document, or None when absent, unreadable, too large or not JSON."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("trend history unreadable", extra={"file": str(self.path), "error": str(exc)[:200]})
            return None
        if len(data) > MAX_STATE_BYTES:
            log.warning("trend history too large, ignored", extra={"file": str(self.path)})
            return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            log.warning("trend history is not JSON, ignored", extra={"file": str(self.path)})
            return None

    def write(self, state: Mapping[str, Any]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(state, f, separators=(",", ":"))
            os.replace(tmp, self.path)
        except OSError as exc:  # trends are advisory: losing history is reported, not fatal
            if not self._write_failing:  # once per failure streak, not every persist interval
                log.warning(
                    "trend history not written", extra={"file": str(self.path), "error": str(exc)[:200]}
                )
            self._write_failing = True
            return
        if self._write_failing:
            log.info("trend history written again", extra={"file": str(self.path)})
        self._write_failing = False
