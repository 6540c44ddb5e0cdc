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
    windows: Sequence[Window], usages: Sequence[tuple[datetime, int]], duration: timedelta
) -> tuple[list[Window], datetime | None]:
    """Add sorted usages to a chain's suffix (every window ending after the first usage).

    Returns the new suffix, and the time from which the chain must be recomputed from
    the full usage history when a usage falls in a gap before a later window (a late
    event that opens a window of its own and shifts the ones after it). In that case
    the returned suffix holds only the windows before that time.
    """
    # The windows as three lists, made into Windows once at the end: a batch adds many usages to few
    # windows, and a Window rebuilt per usage (namedtuple._replace) was most of a rebuild's window work.
    starts = [w.start for w in windows]
    ends = [w.end for w in windows]
    flows = [w.flows for w in windows]
    i = -1
    for at, added in usages:
        i = bisect.bisect_right(starts, at, max(i, 0)) - 1  # usages are sorted: never left of the last
        if i >= 0 and at < ends[i]:
            flows[i] += added
        elif i == len(starts) - 1:
            starts.append(at)
            ends.append(at + duration)
            flows.append(added)
            i += 1
        else:
            return [Window(s, e, f) for s, e, f in zip(starts, ends, flows, strict=True) if s < at], at
    return [Window(s, e, f) for s, e, f in zip(starts, ends, flows, strict=True)], None


def current(window: Window | None, now: datetime) -> Window | None:
    """The latest window if it is still open at `now`."""
    if window is not None and now < window.end:
        return window
    return None
