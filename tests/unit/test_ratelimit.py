"""Requests per minute: GCRA with a burst of `rpm`, then one call every 60/rpm s.

Pure: every decision is computed from (tat, now, rpm); the tests feed the returned tat back
in the way admission does, and only when the call was allowed (a refusal keeps the tat)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.quota.domain.ratelimit import MINUTE, RateDecision, gcra

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
MS = timedelta(milliseconds=1)

# limits that divide a minute into whole microseconds (the plans use 10 and 15)
EXACT_RPMS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 16, 20, 30, 60, 64, 100, 120, 600, 1000]


def run(rpm: int, times: list[datetime], tat: datetime | None = None) -> list[RateDecision]:
    """Every request in order, the state carried over as admission carries it."""
    decisions = []
    for now in times:
        decision = gcra(tat, now, rpm)
        decisions.append(decision)
        if decision.allowed:
            tat = decision.tat
    return decisions


def burst_tat(rpm: int, now: datetime = T0) -> datetime | None:
    """The tat after `rpm` requests at the same instant on a fresh account."""
    tat = None
    for decision in run(rpm, [now] * rpm):
        if decision.allowed:
            tat = decision.tat
    return tat


# --- burst and remaining -------------------------------------------------------------------


def test_first_request_on_a_fresh_account_is_allowed():
    decision = gcra(None, T0, 10)
    assert decision == RateDecision(True, T0 + timedelta(seconds=6), 9, 6.0, 0)


@pytest.mark.parametrize("rpm", EXACT_RPMS)
def test_fresh_burst_allows_exactly_rpm_and_remaining_counts_down(rpm):
    decisions = run(rpm, [T0] * (rpm + 3))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == rpm
    assert [d.remaining for d in allowed] == list(range(rpm - 1, -1, -1))
    assert all(not d.allowed and d.remaining == 0 for d in decisions[rpm:])


@given(rpm=st.integers(1, 400))
@example(rpm=7)
@example(rpm=13)
def test_a_burst_allows_exactly_rpm_even_when_a_minute_does_not_divide_by_rpm(rpm):
    """The interval is rounded down: rpm of them never exceed the minute (with rpm = 7 a
    rounded-up 8.571429 s interval once let only 6 calls of a burst through)."""
    allowed = [d for d in run(rpm, [T0] * rpm) if d.allowed]
    assert len(allowed) == rpm
    assert allowed[0].remaining == rpm - 1


@pytest.mark.parametrize("rpm", [1, 10, 15, 60])
def test_reset_is_when_the_full_limit_is_back(rpm):
    tat = burst_tat(rpm)
    last = run(rpm, [T0] * rpm)[-1]
    assert last.allowed
    assert last.reset_s == pytest.approx(60.0)
    # after reset_s the whole burst is available again, a moment before it is not
    back = T0 + timedelta(seconds=last.reset_s)
    assert len([d for d in run(rpm, [back] * rpm, tat) if d.allowed]) == rpm
    early = back - MS
    assert len([d for d in run(rpm, [early] * rpm, tat) if d.allowed]) == rpm - 1


# --- the rolling-minute bound --------------------------------------------------------------


offsets_ms = st.lists(st.integers(0, 180_000), min_size=1, max_size=80).map(sorted)


def allowed_times(rpm: int, offsets: list[int]) -> list[datetime]:
    times = [T0 + offset * MS for offset in offsets]
    return [t for t, d in zip(times, run(rpm, times), strict=True) if d.allowed]


def max_in_a_minute(times: list[datetime]) -> int:
    """The most of `times` (sorted) in any window [t, t + 60 s)."""
    return max((sum(1 for u in times if t <= u < t + MINUTE) for t in times), default=0)


@settings(max_examples=100, deadline=None)
@given(rpm=st.sampled_from(EXACT_RPMS[:12]), offsets=offsets_ms)
def test_never_more_than_twice_rpm_within_one_minute(rpm, offsets):
    """What the algorithm does bound: a full bucket plus a minute's refill."""
    assert max_in_a_minute(allowed_times(rpm, offsets)) <= 2 * rpm


@settings(max_examples=100, deadline=None)
@given(rpm=st.sampled_from(EXACT_RPMS), offsets=offsets_ms)
def test_the_allowed_calls_are_at_most_rpm_plus_what_the_elapsed_time_earns(rpm, offsets):
    times = allowed_times(rpm, offsets)
    if times:
        elapsed = times[-1] - times[0]
        assert len(times) <= rpm + elapsed // (MINUTE / rpm)


# --- a steady stream -----------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(rpm=st.integers(1, 120), start_ms=st.integers(0, 10**9))
def test_a_steady_stream_at_the_rate_is_always_allowed(rpm, start_ms):
    start = T0 + start_ms * MS
    interval = MINUTE / rpm
    times = [start + k * interval for k in range(3 * rpm + 2)]
    assert all(d.allowed for d in run(rpm, times))


@settings(max_examples=60, deadline=None)
@given(rpm=st.integers(1, 120))
def test_a_steady_stream_right_after_the_initial_burst_is_always_allowed(rpm):
    tat = burst_tat(rpm)
    interval = MINUTE / rpm
    stream = [T0 + k * interval for k in range(1, 3 * rpm + 2)]
    decisions = run(rpm, stream, tat)
    assert all(d.allowed for d in decisions)
    # and nothing more: one extra call squeezed in anywhere is refused
    squeezed = run(rpm, [*stream[: rpm + 1], stream[rpm]], tat)
    assert not squeezed[-1].allowed


def test_a_stream_faster_than_the_rate_is_refused_once_the_burst_is_spent():
    rpm = 10
    times = [T0 + k * timedelta(seconds=3) for k in range(40)]  # twice the rate
    allowed = [d.allowed for d in run(rpm, times)]
    assert all(allowed[:19])  # burst of 10 plus one every 6 s while the burst drains
    assert allowed.count(True) == 10 + (39 * 3) // 6
    assert allowed[19:] == [k % 2 == 0 for k in range(19, 40)]


# --- refusals ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    rpm=st.sampled_from(EXACT_RPMS),
    offsets=offsets_ms,
    probe_us=st.integers(0, 120_000_000),
)
def test_a_refusal_keeps_the_tat_and_its_retry_after_is_exact(rpm, offsets, probe_us):
    tat = None
    for decision in run(rpm, [T0 + offset * MS for offset in offsets]):
        if decision.allowed:
            tat = decision.tat
    now = T0 + timedelta(microseconds=probe_us)
    decision = gcra(tat, now, rpm)
    if decision.allowed:
        return
    assert decision.tat == tat
    assert decision.remaining == 0
    assert decision.reset_s == (tat - now).total_seconds()
    assert decision.retry_after_s >= 1
    assert isinstance(decision.retry_after_s, int)
    # waiting as long as told is enough ...
    assert gcra(tat, now + timedelta(seconds=decision.retry_after_s), rpm).allowed
    # ... and a second less is not (it is the smallest whole number of seconds)
    if decision.retry_after_s > 1:
        assert not gcra(tat, now + timedelta(seconds=decision.retry_after_s - 1), rpm).allowed


@pytest.mark.parametrize("rpm", [1, 10, 15])
def test_refusals_never_move_the_tat_however_many(rpm):
    tat = burst_tat(rpm)
    for k in range(50):
        now = T0 + k * MS
        decision = gcra(tat, now, rpm)
        assert not decision.allowed
        assert decision.tat == tat
        assert decision.retry_after_s == max(1, -(-(tat - MINUTE + MINUTE / rpm - now) // timedelta(seconds=1)))


def test_retry_after_is_one_second_at_least_even_when_almost_free():
    rpm = 10
    tat = burst_tat(rpm)
    # the next slot opens at T0 + 6 s: a microsecond before, the wait rounds up to one second
    decision = gcra(tat, T0 + timedelta(seconds=6) - timedelta(microseconds=1), rpm)
    assert not decision.allowed
    assert decision.retry_after_s == 1
    assert gcra(tat, T0 + timedelta(seconds=6), rpm).allowed


def test_a_stale_tat_in_the_past_counts_as_a_fresh_account():
    long_ago = T0 - timedelta(days=3)
    assert gcra(long_ago, T0, 15) == gcra(None, T0, 15)
