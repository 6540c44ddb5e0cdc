"""quota's windows in Postgres: a batch's subscription usage added to the 5-hour and weekly chains
and the months (memory's latest windows updated alongside), late calls re-chained, months
recounted after a plan change cut the periods differently. The projection (projection.py) calls
these inside its batch transaction."""

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import NamedTuple

import asyncpg

from libs.pricing.catalog import FREE
from proto.v1 import UsageRecorded
from services.quota.domain.admission import AccountQuota
from services.quota.domain.compact import add_flows
from services.quota.domain.periods import Segment, period_at, period_in, segment_at
from services.quota.domain.windows import (
    CHAINS,
    FIVE_HOURS,
    ONE_WEEK,
    ChainKind,
    Usage,
    Window,
    WindowKind,
    add_usages,
    chain,
)


class CachedPeriod(NamedTuple):
    """An account's latest monthly period, the plan history it was cut from, and the segment of that
    history in force all through it (a period ends where a new plan begins)."""

    start: datetime
    end: datetime
    segments: tuple[Segment, ...]
    segment: Segment


_NEVER = datetime.max.replace(tzinfo=UTC)
NO_PERIOD = CachedPeriod(_NEVER, datetime.min.replace(tzinfo=UTC), (), Segment(_NEVER, FREE, _NEVER, ""))
"""No time falls in it: the first event of an account not kept works its period out."""
_BY_TIME = attrgetter("occurred_at", "event_id")
"""A batch's calls of one account in time order (ties by id: the order does not depend on arrival)."""
PERIODS_KEPT = 20_000
"""Accounts whose latest period is kept between batches: most batches' calls fall in it, and working
it out again (period_at: a bisect and three month additions) was a fifth of quota's apply. Bounded,
so that a million accounts do not keep one each (quota's memory per account is counted)."""


class WindowTables:
    def __init__(self, schema: str) -> None:
        self.schema = schema
        self._periods: dict[str, CachedPeriod] = {}

    async def recount_months(
        self, conn: asyncpg.Connection, account_id: str, account: AccountQuota, since: datetime
    ) -> None:
        """Periods from `since` on were cut differently by a plan change: count them again."""
        rows = await conn.fetch(
            f"""SELECT occurred_at, flows_micros FROM {self.schema}.usage
                WHERE account_id = $1 AND billing_mode = 'subscription' AND occurred_at >= $2""",
            account_id,
            since,
        )
        totals: dict[tuple[datetime, datetime], int] = defaultdict(int)
        for row in rows:
            totals[period_at(account.segments, row["occurred_at"])] += row["flows_micros"]
        await conn.execute(
            f"DELETE FROM {self.schema}.windows WHERE account_id = $1 AND kind = 'month' AND started_at >= $2",
            account_id,
            since,
        )
        account.months = {start: flows for start, flows in account.months.items() if start < since}
        await self.add_months(conn, {(account_id, start, end): flows for (start, end), flows in totals.items()})
        for (start, _), flows in totals.items():
            account.months[start] = account.months.get(start, 0) + flows

    async def count(
        self,
        conn: asyncpg.Connection,
        counted: dict[str, list[UsageRecorded]],
        pending: dict[str, AccountQuota],
        consumed: dict[tuple[str, str], int] | None,
    ) -> None:
        """Add the batch's subscription usage to the windows, aggregated per account and window: one
        row per window changed, written with one statement for the whole batch. `consumed`: the Flows
        by model and plan, for the metrics (None: not counted, as in a rebuild).

        Memory holds each chain's latest window, which is all of the chain's suffix unless a call
        falls before that window's start (a late call): only then are the earlier windows read.
        The usual batch gives an account one call or a few, all in its open windows and its latest
        period: that path works per account, not per call, and makes no window but the rows."""
        late: dict[str, datetime] = {}
        opened: list[tuple[str, list[UsageRecorded], AccountQuota, Window | None, Window | None]] = []
        for account_id, events in counted.items():
            if len(events) > 1:
                events.sort(key=_BY_TIME)
            account, first = pending[account_id], events[0].occurred_at
            window_5h, weekly = account.window_5h, account.weekly  # unpacked once
            opened.append((account_id, events, account, window_5h, weekly))
            if (window_5h is not None and first < window_5h.start) or (weekly is not None and first < weekly.start):
                late[account_id] = first
        suffixes = await self._load_suffixes(conn, late) if late else {}
        rows: list[tuple[str, WindowKind, datetime, datetime, int]] = []  # quota.windows' column order
        months: dict[tuple[str, datetime, datetime], int] = defaultdict(int)
        for account_id, events, account, window_5h, weekly in opened:
            first, last = events[0].occurred_at, events[-1].occurred_at
            flows = events[0].flows_micros if len(events) == 1 else sum(e.flows_micros for e in events)
            if account_id not in late and window_5h is not None and last < window_5h.end:  # most batches
                if flows:
                    rows.append((account_id, "5h", window_5h.start, window_5h.end, window_5h.flows + flows))
                    account.packed_5h = add_flows(account.packed_5h, window_5h, flows, FIVE_HOURS)
            else:
                latest = await self._add(conn, account_id, "5h", suffixes, late, window_5h, events, rows)
                if latest is not None:
                    account.window_5h = latest
            if account_id not in late and weekly is not None and last < weekly.end:
                if flows:
                    rows.append((account_id, "week", weekly.start, weekly.end, weekly.flows + flows))
                    account.packed_weekly = add_flows(account.packed_weekly, weekly, flows, ONE_WEEK)
            else:
                latest = await self._add(conn, account_id, "week", suffixes, late, weekly, events, rows)
                if latest is not None:
                    account.weekly = latest
            segments = account.segments
            period = self._periods.get(account_id, NO_PERIOD)
            if period.segments != segments:  # a plan change: the periods may be cut differently
                period = NO_PERIOD
            totals = account.months
            if period.start <= first and last < period.end:  # all in the latest period: most batches
                months[(account_id, period.start, period.end)] += flows
                totals[period.start] = totals.get(period.start, 0) + flows
                if consumed is not None:
                    segment = period.segment
                    if segment.paid_until is None or last < segment.paid_until:
                        plan = segment.plan
                        for event in events:
                            consumed[(event.model, plan)] += event.flows_micros
                    else:
                        for event in events:
                            consumed[(event.model, segment.plan_at(event.occurred_at))] += event.flows_micros
                continue
            added: dict[datetime, int] = defaultdict(int)  # to the account's months, by period start
            for event in events:  # in time order: most fall in the period of the one before
                at = event.occurred_at
                if not period.start <= at < period.end:
                    i = segment_at(segments, at)
                    period = CachedPeriod(*period_in(segments, i, at), segments, segments[i])
                    if len(self._periods) >= PERIODS_KEPT:
                        self._periods.clear()
                    self._periods[account_id] = period
                months[(account_id, period.start, period.end)] += event.flows_micros
                added[period.start] += event.flows_micros
                if consumed is not None:
                    consumed[(event.model, period.segment.plan_at(at))] += event.flows_micros
            for start, flows_micros in added.items():
                totals[start] = totals.get(start, 0) + flows_micros
        rows += [(a, "month", start, end, flows) for (a, start, end), flows in months.items()]
        await conn.execute(  # rows of the table's own type, in its column order: see projection.py's usage
            f"""INSERT INTO {self.schema}.windows AS w SELECT * FROM unnest($1::{self.schema}.windows[])
                ON CONFLICT (account_id, kind, started_at) DO UPDATE SET
                    ends_at = CASE WHEN w.kind = 'month' THEN w.ends_at ELSE EXCLUDED.ends_at END,
                    flows_micros = CASE WHEN w.kind = 'month' THEN w.flows_micros + EXCLUDED.flows_micros
                                        ELSE EXCLUDED.flows_micros END""",
            rows,
        )

    async def _add(
        self,
        conn: asyncpg.Connection,
        account_id: str,
        kind: ChainKind,
        suffixes: dict[tuple[str, str], list[Window]],
        late: dict[str, datetime],
        latest: Window | None,
        events: list[UsageRecorded],
        rows: list[tuple[str, WindowKind, datetime, datetime, int]],
    ) -> Window | None:
        """An account's calls (in time order) added to one chain when they do not all fall in its open
        window: the rows of the windows changed, and the chain's latest window (None: unchanged)."""
        if account_id in late:
            loaded = suffixes.get((account_id, kind), [])
        else:
            loaded = [latest] if latest is not None and latest.end > events[0].occurred_at else []
        duration = CHAINS[kind]
        windows, rechain_from = add_usages(loaded, [(e.occurred_at, e.flows_micros) for e in events], duration)
        unchanged = set(loaded)
        if rechain_from is not None:
            windows += await self._rechain(conn, account_id, kind, duration, rechain_from)
            unchanged = {w for w in unchanged if w.start < rechain_from}
        rows += [(account_id, kind, w.start, w.end, w.flows) for w in windows if w not in unchanged]
        return windows[-1] if windows else None

    async def _load_suffixes(
        self, conn: asyncpg.Connection, since: dict[str, datetime]
    ) -> dict[tuple[str, str], list[Window]]:
        """Per account and chain kind, every window that ends after the account's earliest new usage."""
        rows = await conn.fetch(
            f"""SELECT w.account_id, w.kind, w.started_at, w.ends_at, w.flows_micros
                FROM {self.schema}.windows w
                JOIN unnest($1::text[], $2::timestamptz[]) AS s(account_id, since)
                  ON w.account_id = s.account_id AND w.ends_at > s.since
                WHERE w.kind IN ('5h', 'week')
                ORDER BY w.account_id, w.kind, w.started_at""",
            list(since),
            list(since.values()),
        )
        suffixes: dict[tuple[str, str], list[Window]] = defaultdict(list)
        for row in rows:
            suffixes[(row["account_id"], row["kind"])].append(
                Window(row["started_at"], row["ends_at"], row["flows_micros"])
            )
        return suffixes

    async def _rechain(
        self, conn: asyncpg.Connection, account_id: str, kind: ChainKind, duration: timedelta, since: datetime
    ) -> list[Window]:
        """A late event opened a window before later ones: rebuild the chain from it."""
        await conn.execute(
            f"DELETE FROM {self.schema}.windows WHERE account_id = $1 AND kind = $2 AND started_at >= $3",
            account_id,
            kind,
            since,
        )
        rows = await conn.fetch(
            f"""SELECT occurred_at, flows_micros FROM {self.schema}.usage
                WHERE account_id = $1 AND billing_mode = 'subscription' AND occurred_at >= $2
                ORDER BY occurred_at""",
            account_id,
            since,
        )
        return chain((Usage(r["occurred_at"], r["flows_micros"]) for r in rows), duration)

    async def add_months(self, conn: asyncpg.Connection, months: dict[tuple[str, datetime, datetime], int]) -> None:
        if not months:
            return
        await conn.execute(
            f"""INSERT INTO {self.schema}.windows AS w (account_id, kind, started_at, ends_at, flows_micros)
                SELECT a, 'month', s, e, f FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[],
                    $4::bigint[]) AS m(a, s, e, f)
                ON CONFLICT (account_id, kind, started_at)
                DO UPDATE SET flows_micros = w.flows_micros + EXCLUDED.flows_micros""",
            [a for a, _, _ in months],
            [s for _, s, _ in months],
            [e for _, _, e in months],
            list(months.values()),
        )
