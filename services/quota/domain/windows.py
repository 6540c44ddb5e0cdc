"""Rolling windows by event time.

A window opens with the first usage while none is open and lasts exactly its
duration; the next usage after it closes opens the next one. Over a set of usage
times this is one greedy chain, whatever order the usage arrived in: that is what
makes late, out-of-order and replayed events land in the window they belong to.
"""

import bisect
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Literal, NamedTuple

FIVE_HOURS = timedelta(hours=5)
ONE_WEEK = timedelta(days=7)

WindowKind = Literal["5h", "week", "month"]
"""The kinds of quota.windows rows: the two chains of rolling windows, and monthly periods."""
ChainKind = Literal["5h", "week"]
CHAINS: dict[ChainKind, timedelta] = {"5h": FIVE_HOURS, "week": ONE_WEEK}
"""The rolling windows' chains and each window's length."""


class Window(NamedTuple):
    start: datetime
    end: datetime
    flows: int


class Usage(NamedTuple):
    at: datetime
    flows: int


def chain(usages: Iterable[Usage], duration: timedelta) -> list[Window]:
    """The windows that usages (sorted by time) open, from scratch."""
    windows: list[Window] = []
    for at, flows in usages:
        if windows and at < windows[-1].end:
            last = windows[-1]
            windows[-1] = last._replace(flows=last.flows + flows)
        else:
            windows.append(Window(at, at + duration, flows))
    return windows


def add_usages(
    windows: Sequence[Window], usages: Sequence[Usage], duration: timedelta
) -> tuple[list[Window], datetime | None]:
    """Add sorted usages to a chain's suffix (every window ending after the first usage).

    Returns the new suffix, and the time from which the chain must be recomputed from
    the full usage history when a usage falls in a gap before a later window (a late
    event that opens a window of its own and shifts the ones after it). In that case
    the returned suffix holds only the windows before that time.
    """
    result = list(windows)
    starts = [w.start for w in result]
    for at, flows in usages:
        i = bisect.bisect_right(starts, at) - 1
        if i >= 0 and at < result[i].end:
            result[i] = result[i]._replace(flows=result[i].flows + flows)
        elif i == len(result) - 1:
            result.append(Window(at, at + duration, flows))
            starts.append(at)
        else:
            return [w for w in result if w.start < at], at
    return result, None


def current(window: Window | None, now: datetime) -> Window | None:
    """The latest window if it is still open at `now`."""
    if window is not None and now < window.end:
        return window
    return None
