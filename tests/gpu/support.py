"""Shared helpers of the GPU tests."""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.model import CheckResult


class RecordingSink:
    """Keeps the latest result of every condition (thread-safe enough for these tests)."""

    def __init__(self) -> None:
        self.latest: dict[str, CheckResult] = {}
        self.triggers: list[str] = []

    def submit(self, results: Iterable[CheckResult]) -> None:
        for r in results:
            self.latest[r.name] = r

    def trigger(self, check_name: str) -> None:
        self.triggers.append(check_name)
