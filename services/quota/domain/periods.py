"""Monthly billing periods: counted from the subscription's anchor (payment time, or the
account's creation for Free), one calendar month each, cut short where a new plan begins."""

import bisect
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from libs.months import add_months
from libs.pricing.catalog import FREE


class Segment(NamedTuple):
    """The plan in force from `effective_at` on; its monthly periods count from `anchor`. A paid
    plan runs until `paid_until` unless renewed: past it, the account is on Free."""

    effective_at: datetime
    plan: str
    anchor: datetime
    event_id: str
    paid_until: datetime | None = None

    def plan_at(self, when: datetime) -> str:
        """The plan in force at `when`, a time this segment is in force at."""
        if self.paid_until is not None and when >= self.paid_until:
            return FREE  # the paid period ended unpaid
        return self.plan


class Period(NamedTuple):
    start: datetime
    end: datetime


def segment_at(segments: Sequence[Segment], when: datetime) -> int:
    """Index of the segment in force at `when` (the first one for times before all of them)."""
    i = bisect.bisect_right([s.effective_at for s in segments], when) - 1
    return max(i, 0)


def period_at(segments: Sequence[Segment], when: datetime) -> Period:
    return period_in(segments, segment_at(segments, when), when)


def period_in(segments: Sequence[Segment], i: int, when: datetime) -> Period:
    """period_at when the segment in force at `when` is known to be segments[i] (segment_at)."""
    anchor = segments[i].anchor
    months = (when.year - anchor.year) * 12 + (when.month - anchor.month)
    start = add_months(anchor, months)
    while start > when:
        months -= 1
        start = add_months(anchor, months)
    end = add_months(anchor, months + 1)  # each month worked out once: the next one's start is this one's end
    while end <= when:
        months += 1
        start, end = end, add_months(anchor, months + 1)
    if i + 1 < len(segments) and start < segments[i + 1].effective_at < end:
        end = segments[i + 1].effective_at
    if i > 0 and start < segments[i].effective_at:
        start = segments[i].effective_at
    return Period(start, end)
