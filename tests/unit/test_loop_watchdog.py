"""The loop watchdog, driven by a fake clock: it trips once per missed heartbeat and the next
beat tells the loop to publish its own verdict again."""

from __future__ import annotations

from sidecar.runtime.watchdog import LoopWatchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_trips_once_when_the_heartbeat_is_missed_and_the_next_beat_restores() -> None:
    clock = FakeClock()
    blocked: list[float] = []
    dog = LoopWatchdog(2.0, blocked.append, clock=clock)
    dog.beat()
    clock.now += 1.9
    assert dog.check() is False and blocked == []  # within the limit: nothing
    clock.now += 0.2
    assert dog.check() is True
    assert len(blocked) == 1 and abs(blocked[0] - 2.1) < 1e-9
    clock.now += 5.0
    assert dog.check() is True and len(blocked) == 1  # one trip per blockage, no log flood
    assert dog.beat() is True  # the loop is back: it must republish
    assert dog.check() is False
    assert dog.beat() is False  # nothing to republish on an ordinary beat
    clock.now += 2.5
    assert dog.check() is True and len(blocked) == 2  # a second blockage trips again


def test_beats_in_time_never_trip() -> None:
    clock = FakeClock()
    blocked: list[float] = []
    dog = LoopWatchdog(1.0, blocked.append, clock=clock)
    for _ in range(100):
        clock.now += 0.9
        assert dog.check() is False
        assert dog.beat() is False
    assert blocked == []


def test_a_failing_action_does_not_kill_the_watchdog() -> None:
    clock = FakeClock()

    def boom(_quiet: float) -> None:
        raise RuntimeError("registry gone")

    dog = LoopWatchdog(1.0, boom, clock=clock)
    clock.now += 2.0
    assert dog.check() is True
    assert dog.beat() is True
