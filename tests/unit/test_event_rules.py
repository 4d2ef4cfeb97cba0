"""The Events publisher's pure rules: which transitions become which Event (type, reason,
message, labels, annotations), how repeats fold into one Event's count, and the token bucket
that bounds the API calls (driven clocks, no API server)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sidecar.core.values import Severity, Transition
from sidecar.publish.event_rules import (
    ANNOTATION_CONDITION,
    ANNOTATION_GPU_INDEX,
    ANNOTATION_REASON,
    LABEL_GPU_UUID,
    LABEL_SEVERITY,
    MAX_MESSAGE,
    MAX_REASON,
    MAX_SERIES,
    REASON_RECOVERED,
    Occurrence,
    SeriesBook,
    TokenBucket,
    TransitionJudge,
)

UUID = "GPU-0f6c2a4e-1111-2222-3333-444455556666"
COND = f"gpu/{UUID}/xid"


class DrivenClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tr(
    healthy: bool | None,
    previous: bool | None,
    severity: Severity = Severity.FATAL,
    *,
    reason: str = "XidFatal79",
    message: str = "Xid 79: fallen off the bus",
    condition: str = COND,
    at: float = 50.0,
    labels: dict[str, str] | None = None,
) -> Transition:
    return Transition(
        condition=condition,
        healthy=healthy,
        previous=previous,
        reason=reason,
        message=message,
        at=at,
        labels={"uuid": UUID, "gpu": "0"} if labels is None else labels,
        severity=severity,
    )


@dataclass(frozen=True)
class Case:
    transition: Transition
    type: str | None  # None: no Event


@pytest.mark.parametrize(
    "case",
    [
        # FATAL: always news, also a latch restored after a restart (previous None)
        Case(tr(False, None, Severity.FATAL), "Warning"),
        Case(tr(False, True, Severity.FATAL), "Warning"),
        # CRITICAL: only after it was healthy once (cold starts make no noise)
        Case(tr(False, None, Severity.CRITICAL, reason="LoadingEngine"), None),
        Case(tr(False, True, Severity.CRITICAL, reason="CanaryMismatch"), "Warning"),
        # WARNING and INFO never become Events
        Case(tr(False, True, Severity.WARNING, reason="EccCorrectableRate"), None),
        Case(tr(False, True, Severity.INFO, reason="Unmonitored"), None),
        # a recovery of something never reported failing is not news
        Case(tr(True, False, Severity.FATAL), None),
        Case(tr(True, None, Severity.FATAL), None),
        # established-unknown is neither failing nor recovered
        Case(tr(None, True, Severity.FATAL), None),
    ],
    ids=lambda c: f"{c.transition.severity.name}-{c.transition.previous}->{c.transition.healthy}",
)
def test_which_transitions_become_events(case: Case) -> None:
    occ = TransitionJudge(DrivenClock()).occurrence(case.transition)
    assert (occ.type if occ is not None else None) == case.type


def test_a_failure_is_a_warning_naming_reason_gpu_and_condition() -> None:
    occ = TransitionJudge(DrivenClock()).occurrence(tr(False, True))
    assert occ == Occurrence(
        type="Warning",
        reason="XidFatal79",
        condition=COND,
        message=f"{COND}: Xid 79: fallen off the bus [GPU {UUID}]",
        at=50.0,
        labels={LABEL_SEVERITY: "fatal", LABEL_GPU_UUID: UUID},
        annotations={ANNOTATION_CONDITION: COND, ANNOTATION_REASON: "XidFatal79", ANNOTATION_GPU_INDEX: "0"},
    )


def test_the_recovery_is_normal_recovered_and_names_what_it_was() -> None:
    judge = TransitionJudge(DrivenClock())
    assert judge.occurrence(tr(False, True)) is not None
    occ = judge.occurrence(tr(True, False, reason="Ok", message="no Xid", at=60.0))
    assert occ is not None
    assert (occ.type, occ.reason, occ.at) == ("Normal", REASON_RECOVERED, 60.0)
    assert occ.message == f"{COND} recovered (was XidFatal79): no Xid [GPU {UUID}]"
    assert occ.annotations[ANNOTATION_REASON] == "XidFatal79"
    # reported once: a second recovery is not news
    assert judge.occurrence(tr(True, False, reason="Ok", message="")) is None


def test_recovery_without_message() -> None:
    judge = TransitionJudge(DrivenClock())
    judge.occurrence(tr(False, True, labels={}))
    occ = judge.occurrence(tr(True, False, reason="Ok", message="", labels={}))
    assert occ is not None and occ.message == f"{COND} recovered (was XidFatal79)"
    assert occ.labels == {LABEL_SEVERITY: "fatal"} and ANNOTATION_GPU_INDEX not in occ.annotations


@pytest.mark.parametrize(
    ("labels", "in_label"),
    [
        ({"gpu_uuid": UUID}, True),
        ({"gpu-uuid": UUID}, True),
        ({"uuid": "GPU with spaces"}, False),  # not a valid label value: message only
        ({"uuid": "x" * 64}, False),
    ],
)
def test_the_gpu_uuid_is_a_label_only_when_kubernetes_accepts_it(
    labels: dict[str, str], in_label: bool
) -> None:
    occ = TransitionJudge(DrivenClock()).occurrence(tr(False, True, labels=labels))
    assert occ is not None
    uuid = next(iter(labels.values()))
    assert occ.message.endswith(f" [GPU {uuid}]")
    assert (LABEL_GPU_UUID in occ.labels) is in_label


def test_no_reason_long_reason_long_message_and_no_time() -> None:
    clock = DrivenClock(1234.5)
    judge = TransitionJudge(clock)
    occ = judge.occurrence(tr(False, True, reason="", at=0.0, labels={}))
    assert occ is not None and occ.reason == "HealthCheckFailed" and occ.at == 1234.5
    occ = judge.occurrence(tr(False, True, reason="R" * 300, message="m" * 5000, condition="other"))
    assert occ is not None and len(occ.reason) == MAX_REASON and len(occ.message) == MAX_MESSAGE


def occurrence(at: float, reason: str = "XidFatal79", condition: str = COND) -> Occurrence:
    return Occurrence("Warning", reason, condition, "m", at, {}, {})


def test_repeats_within_the_window_fold_into_one_series() -> None:
    book = SeriesBook(aggregate_window_s=600.0)
    assert book.record(occurrence(100.0)) is False
    (series,) = book.series.values()
    series.pending = False  # sent
    assert book.record(occurrence(400.0)) is True
    assert book.record(occurrence(700.0)) is True  # 600 s after the first: still inside
    assert (series.count, series.occurrence.at, series.pending, series.first_at) == (3, 700.0, True, 100.0)
    # past the window: a new Event
    assert book.record(occurrence(700.5)) is False
    (fresh,) = book.series.values()
    assert fresh is not series and fresh.count == 1 and fresh.first_at == 700.5
    # another reason or condition is another series
    assert book.record(occurrence(701.0, reason="XidFatal48")) is False
    assert book.record(occurrence(702.0, condition="canary")) is False
    assert [s.occurrence.at for s in book.in_send_order()] == [700.5, 701.0, 702.0]


def test_the_book_forgets_settled_series_beyond_its_bound() -> None:
    book = SeriesBook(aggregate_window_s=1.0)
    for i in range(MAX_SERIES):
        book.record(occurrence(float(i), condition=f"c{i}"))
    for s in list(book.series.values())[:10]:
        s.pending = False
    book.record(occurrence(5000.0, condition="new"))
    # the oldest half (plus one) of the settled series go; the pending ones all stay
    conditions = [s.occurrence.condition for s in book.series.values()]
    assert len(conditions) == MAX_SERIES - 6 + 1
    assert conditions[:4] == ["c6", "c7", "c8", "c9"] and conditions[-1] == "new"
    assert sum(not s.pending for s in book.series.values()) == 4


def test_the_token_bucket_on_a_driven_clock() -> None:
    clock = DrivenClock(0.0)
    bucket = TokenBucket(burst=2, refill_interval_s=10.0, monotonic=clock)
    assert [bucket.take(), bucket.take(), bucket.take()] == [True, True, False]
    assert bucket.wait_s() == pytest.approx(10.0)
    clock.now = 5.0
    assert bucket.take() is False and bucket.wait_s() == pytest.approx(5.0)
    clock.now = 10.0
    assert bucket.take() is True and bucket.take() is False
    clock.now = 1000.0  # a long quiet spell refills to the burst, no more
    assert [bucket.take(), bucket.take(), bucket.take()] == [True, True, False]
