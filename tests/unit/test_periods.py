"""Monthly billing periods: calendar months from the anchor, clamped, cut short by a new plan."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.quota.domain.periods import Period, Segment, add_months, period_at, period_in, segment_at


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("when", "months", "expected"),
    [
        (utc(2025, 1, 31, 12, 30), 1, utc(2025, 2, 28, 12, 30)),
        (utc(2024, 1, 31, 12, 30), 1, utc(2024, 2, 29, 12, 30)),  # leap year
        (utc(2025, 1, 31), 2, utc(2025, 3, 31)),  # clamped only where needed, not carried over
        (utc(2025, 3, 31), 1, utc(2025, 4, 30)),
        (utc(2025, 3, 31), -1, utc(2025, 2, 28)),
        (utc(2025, 1, 15), -1, utc(2024, 12, 15)),
        (utc(2025, 12, 15), 1, utc(2026, 1, 15)),
        (utc(2025, 11, 30), 14, utc(2027, 1, 30)),
        (utc(2025, 5, 10, 8, 7, 6, 5), 0, utc(2025, 5, 10, 8, 7, 6, 5)),
        (utc(2024, 2, 29), 12, utc(2025, 2, 28)),
        (utc(2024, 2, 29), 48, utc(2028, 2, 29)),
    ],
)
def test_add_months(when, months, expected):
    result = add_months(when, months)
    assert result == expected
    assert result.tzinfo is UTC


def seg(effective_at: datetime, plan: str, anchor: datetime | None = None, event_id: str = "e") -> Segment:
    return Segment(effective_at, plan, anchor or effective_at, event_id)


def test_period_with_one_segment():
    segments = [seg(utc(2025, 1, 10, 15), "pro")]
    assert period_at(segments, utc(2025, 1, 10, 15)) == Period(utc(2025, 1, 10, 15), utc(2025, 2, 10, 15))
    assert period_at(segments, utc(2025, 1, 20)) == Period(utc(2025, 1, 10, 15), utc(2025, 2, 10, 15))
    # the end is exclusive: the next period starts at it
    assert period_at(segments, utc(2025, 2, 10, 15)) == Period(utc(2025, 2, 10, 15), utc(2025, 3, 10, 15))
    assert period_at(segments, utc(2025, 2, 10, 14, 59, 59)) == Period(utc(2025, 1, 10, 15), utc(2025, 2, 10, 15))
    # same day-of-month, but an earlier time of day: still the previous period
    assert period_at(segments, utc(2025, 3, 10, 9)) == Period(utc(2025, 2, 10, 15), utc(2025, 3, 10, 15))
    assert period_at(segments, utc(2026, 1, 1)) == Period(utc(2025, 12, 10, 15), utc(2026, 1, 10, 15))


def test_periods_from_a_month_end_anchor_are_clamped_and_do_not_drift():
    segments = [seg(utc(2025, 1, 31), "pro")]
    assert period_at(segments, utc(2025, 2, 15)) == Period(utc(2025, 1, 31), utc(2025, 2, 28))
    assert period_at(segments, utc(2025, 3, 1)) == Period(utc(2025, 2, 28), utc(2025, 3, 31))
    assert period_at(segments, utc(2025, 4, 15)) == Period(utc(2025, 3, 31), utc(2025, 4, 30))
    assert period_at(segments, utc(2025, 5, 30)) == Period(utc(2025, 4, 30), utc(2025, 5, 31))


def test_period_for_a_time_before_the_anchor_counts_backwards():
    """Backfilled usage from before the account was created still lands in a month-long period."""
    segments = [seg(utc(2025, 3, 15, 12), "free")]
    assert period_at(segments, utc(2025, 3, 10)) == Period(utc(2025, 2, 15, 12), utc(2025, 3, 15, 12))
    assert period_at(segments, utc(2025, 3, 15, 11, 59)) == Period(utc(2025, 2, 15, 12), utc(2025, 3, 15, 12))
    assert period_at(segments, utc(2025, 2, 15, 11)) == Period(utc(2025, 1, 15, 12), utc(2025, 2, 15, 12))
    assert period_at(segments, utc(2024, 12, 31)) == Period(utc(2024, 12, 15, 12), utc(2025, 1, 15, 12))


def test_second_segment_cuts_the_first_period_short():
    free = seg(utc(2025, 1, 10), "free", event_id="created")
    pro = seg(utc(2025, 1, 25, 6), "pro", event_id="paid")  # paid mid-period: anchor = payment time
    segments = [free, pro]
    assert period_at(segments, utc(2025, 1, 12)) == Period(utc(2025, 1, 10), utc(2025, 1, 25, 6))
    assert period_at(segments, utc(2025, 1, 25, 5, 59)) == Period(utc(2025, 1, 10), utc(2025, 1, 25, 6))
    assert period_at(segments, utc(2025, 1, 25, 6)) == Period(utc(2025, 1, 25, 6), utc(2025, 2, 25, 6))
    assert period_at(segments, utc(2025, 3, 1)) == Period(utc(2025, 2, 25, 6), utc(2025, 3, 25, 6))
    # a segment boundary that falls on a period boundary does not cut anything
    assert period_at([free, seg(utc(2025, 2, 10), "pro")], utc(2025, 1, 20)) == Period(
        utc(2025, 1, 10), utc(2025, 2, 10)
    )
    # earlier periods of the first segment are whole
    assert period_at(segments, utc(2024, 12, 20)) == Period(utc(2024, 12, 10), utc(2025, 1, 10))


def test_segment_that_keeps_an_older_anchor_starts_its_first_period_at_its_effective_time():
    """A drop to Free (e.g. after a refund) counts periods from the account's creation, but
    the first of them begins when the Free segment does."""
    created = utc(2025, 1, 10)
    segments = [
        seg(created, "free"),
        seg(utc(2025, 1, 20), "pro"),
        seg(utc(2025, 1, 21), "free", anchor=created),
    ]
    assert period_at(segments, utc(2025, 1, 20, 12)) == Period(utc(2025, 1, 20), utc(2025, 1, 21))
    assert period_at(segments, utc(2025, 1, 25)) == Period(utc(2025, 1, 21), utc(2025, 2, 10))
    assert period_at(segments, utc(2025, 2, 15)) == Period(utc(2025, 2, 10), utc(2025, 3, 10))


def test_segment_at():
    segments = [seg(utc(2025, 1, 1), "free"), seg(utc(2025, 2, 1), "pro"), seg(utc(2025, 3, 1), "max")]
    assert segment_at(segments, utc(2024, 6, 1)) == 0  # before all: the first one
    assert segment_at(segments, utc(2025, 1, 31)) == 0
    assert segment_at(segments, utc(2025, 2, 1)) == 1  # in force from its effective time on
    assert segment_at(segments, utc(2025, 2, 28, 23, 59)) == 1
    assert segment_at(segments, utc(2030, 1, 1)) == 2


@given(
    anchor=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
    offset=st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=800)),
)
def test_period_contains_the_time_and_spans_one_clamped_month(anchor, offset):
    when = anchor + offset
    period = period_at([seg(anchor, "pro")], when)
    assert period.start <= when < period.end
    assert timedelta(days=28) <= period.end - period.start <= timedelta(days=31)
    # the period's boundaries are anchor + k months and anchor + (k + 1) months
    months = (period.start.year - anchor.year) * 12 + period.start.month - anchor.month
    assert add_months(anchor, months) == period.start
    assert add_months(anchor, months + 1) == period.end


def period_at_as_it_was(segments: list[Segment], when: datetime) -> Period:
    """period_at before it worked each month out once (the reference for the property below)."""
    i = segment_at(segments, when)
    anchor = segments[i].anchor
    months = (when.year - anchor.year) * 12 + (when.month - anchor.month)
    start = add_months(anchor, months)
    while start > when:
        months -= 1
        start = add_months(anchor, months)
    while add_months(anchor, months + 1) <= when:
        months += 1
        start = add_months(anchor, months)
    end = add_months(anchor, months + 1)
    if i + 1 < len(segments) and start < segments[i + 1].effective_at < end:
        end = segments[i + 1].effective_at
    if i > 0 and start < segments[i].effective_at:
        start = segments[i].effective_at
    return Period(start, end)


plan_times = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))


@given(
    changes=st.lists(
        st.tuples(plan_times, plan_times, st.sampled_from(["free", "pro", "max"])), min_size=1, max_size=5
    ),
    when=plan_times,
)
def test_period_at_and_period_in_equal_the_period_as_it_was_worked_out(changes, when):
    """Each month is now worked out once (the next period's start is this one's end), and the segment
    in force can be given (period_in): the periods are the same, for any plan history and time."""
    segments = sorted(seg(effective_at, plan, anchor) for effective_at, anchor, plan in changes)
    expected = period_at_as_it_was(segments, when)
    assert period_at(segments, when) == expected
    assert period_in(segments, segment_at(segments, when), when) == expected
