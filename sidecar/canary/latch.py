"""The canary's mismatch latch: a wrong answer is sticky until the GPU is reset and then
passes ``recovery_passes`` rounds in a row. Pure (no clock, no I/O).

One latch holds the canary's own finding (a golden mismatch or, with reason
``SilentDataCorruption``, a tensor-core one); a second holds the production engine's.
"""

from __future__ import annotations


class MismatchLatch:
    """Silent-data-corruption latch: sticky until the GPU reset generation changes, then
    ``recovery_passes`` consecutive matching canaries. Pure (no clock, no I/O)."""

    def __init__(self, recovery_passes: int) -> None:
        self.recovery_passes = recovery_passes
        self.latched = False
        self.recovering = False
        self.passes = 0
        self.generation: int | None = None
        self.message = ""

    def observe_generation(self, generation: int) -> None:
        if self.latched and self.generation is None:  # restored from disk: a later reset clears
            self.generation = generation
            return
        if self.latched and self.generation is not None and generation != self.generation:
            self.latched = False
            self.recovering = True
            self.passes = 0

    def mismatch(self, generation: int, message: str) -> None:
        self.latched = True
        self.recovering = False
        self.passes = 0
        self.generation = generation
        self.message = message

    def failed(self) -> None:
        """A round that could not be judged while recovering: the passes must be consecutive."""
        self.passes = 0

    def passed(self) -> None:
        if self.recovering:
            self.passes += 1
            if self.passes >= self.recovery_passes:
                self.recovering = False
                self.message = ""

    @property
    def holds(self) -> bool:
        """True while results must stay failed (latched or still recovering)."""
        return self.latched or self.recovering

    def holds_more_than(self, other: MismatchLatch) -> bool:
        """Latched beats recovering beats clear; of two recovering, the one with fewer passes."""
        if self.latched or other.latched:
            return self.latched and not other.latched
        if self.recovering != other.recovering:
            return self.recovering
        return self.recovering and self.passes < other.passes

    def take(self, other: MismatchLatch) -> None:
        """Take another latch's finding (a reload's replacement takes the old component's;
        ``recovery_passes`` stays this one's, from the new config)."""
        self.latched, self.recovering, self.passes = other.latched, other.recovering, other.passes
        self.generation, self.message = other.generation, other.message
