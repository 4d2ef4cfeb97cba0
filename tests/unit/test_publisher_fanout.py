"""Every publisher gets one verdict under one lock: the loop watchdog's liveness hold reaches
each publisher (naming only liveness) without rewriting the loop's verdict, a fresher verdict
of the loop is served with the hold still on, and the release lets the loop's own verdict
through again."""

from __future__ import annotations

from sidecar.core.protocols import Publication
from sidecar.core.values import SERVICE_LIVENESS, SERVICE_READINESS, ServiceVerdict
from sidecar.publish.fanout import PublisherSet


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, bool], str | None]] = []

    def publish(self, publication: Publication, only: str | None = None) -> None:
        self.seen.append(({n: v.serving for n, v in publication.verdicts.items()}, only))


def _verdicts(ready: bool) -> dict[str, ServiceVerdict]:
    return {
        SERVICE_LIVENESS: ServiceVerdict(SERVICE_LIVENESS, True),
        SERVICE_READINESS: ServiceVerdict(SERVICE_READINESS, ready),
    }


def test_the_watchdog_hold_overrides_liveness_only_and_survives_a_fresher_verdict() -> None:
    a, b = Recorder(), Recorder()
    publishers = PublisherSet([a, b])
    publishers.publish([], _verdicts(ready=True))
    publishers.hold_liveness("EventLoopBlocked: no heartbeat for 6.0s")
    publishers.publish([], _verdicts(ready=False))  # the loop, still without a heartbeat
    publishers.release_liveness()
    publishers.publish([], _verdicts(ready=False))
    expected = [
        ({SERVICE_LIVENESS: True, SERVICE_READINESS: True}, None),
        ({SERVICE_LIVENESS: False, SERVICE_READINESS: True}, SERVICE_LIVENESS),
        ({SERVICE_LIVENESS: False, SERVICE_READINESS: False}, None),
        ({SERVICE_LIVENESS: True, SERVICE_READINESS: False}, None),
    ]
    assert a.seen == expected
    assert b.seen == expected


def test_the_hold_carries_its_reason() -> None:
    reasons: list[tuple[str, ...]] = []

    class Reasons:
        def publish(self, publication: Publication, only: str | None = None) -> None:
            reasons.append(publication.verdicts[SERVICE_LIVENESS].reasons)

    publishers = PublisherSet([Reasons()])
    publishers.publish([], _verdicts(ready=True))
    publishers.hold_liveness("EventLoopBlocked: no heartbeat for 6.0s")
    assert reasons == [(), ("EventLoopBlocked: no heartbeat for 6.0s",)]
