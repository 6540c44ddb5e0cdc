"""Requests per minute per account: GCRA (the generic cell rate algorithm).

One number per account, the theoretical arrival time (TAT). With a limit of `rpm` the
emission interval is T = 60 s / rpm and the burst tolerance 60 s - T, so up to `rpm`
calls may come at once and then one every T; never more than `rpm` in any minute.
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
    interval = MINUTE / rpm
    tolerance = MINUTE - interval
    tat = max(tat or now, now)
    if tat - now > tolerance:
        wait = (tat - tolerance - now).total_seconds()
        return RateDecision(False, tat, 0, (tat - now).total_seconds(), max(1, math.ceil(wait)))
    new_tat = tat + interval
    remaining = int((now + MINUTE - new_tat) / interval)
    return RateDecision(True, new_tat, max(0, remaining), (new_tat - now).total_seconds(), 0)
