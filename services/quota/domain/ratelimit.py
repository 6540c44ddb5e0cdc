"""Requests per minute per account: GCRA (the generic cell rate algorithm).

One number per account, the theoretical arrival time (TAT). With a limit of `rpm` the
emission interval is T = 60 s / rpm (rounded down to the microsecond, so that `rpm`
intervals never exceed the minute) and the burst tolerance 60 s - T: up to `rpm` calls
may come at once, then one every T. So `rpm` calls fit in a burst and `rpm` per minute
is the sustained rate; a rolling minute that straddles a full burst and the refill after
it can see up to 2 x rpm - 1 (the price of GCRA's single number of state).
"""

import math
from datetime import datetime, timedelta
from typing import NamedTuple

MINUTE = timedelta(minutes=1)


class RateDecision(NamedTuple):
    allowed: bool
    tat: datetime
    remaining: int
    reset_s: float
    """Seconds until the full limit is available again."""
    retry_after_s: int


def gcra(tat: datetime | None, now: datetime, rpm: int) -> RateDecision:
    interval = MINUTE // rpm
    tolerance = MINUTE - interval
    tat = max(tat or now, now)
    if tat - now > tolerance:
        wait = (tat - tolerance - now).total_seconds()
        return RateDecision(False, tat, 0, (tat - now).total_seconds(), max(1, math.ceil(wait)))
    new_tat = tat + interval
    remaining = int((now + MINUTE - new_tat) / interval)
    return RateDecision(True, new_tat, max(0, remaining), (new_tat - now).total_seconds(), 0)
