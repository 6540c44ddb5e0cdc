"""quota's memory: what admission reads, per account (the plan history, the latest 5-hour and
weekly window, the monthly totals, the PAYG balance), the reservations of calls in flight, and
how it is loaded from the projection's tables at start and after a replay. The projection
(projection.py) changes it only after the transaction that wrote the same change committed."""

import asyncio
import gc
from collections.abc import AsyncIterator, Collection
from datetime import datetime, timedelta
from fractions import Fraction

import asyncpg

from libs.clock import Clock, SystemClock
from libs.pricing.flows import Versioned
from libs.pricing.multipliers import multiplier_at
from libs.pricing.ratebook import by_partition, load_rate_book
from services.quota.domain.admission import AccountQuota
from services.quota.domain.compact import pack_micros
from services.quota.domain.periods import Segment
from services.quota.domain.windows import FIVE_HOURS, ONE_WEEK
from services.quota.reservations import Reservations

LOAD_CHUNK = 10_000
"""Rows fetched at a time when memory is loaded from the tables."""


async def chunks(conn: asyncpg.Connection, query: str, *args: object) -> AsyncIterator[list[asyncpg.Record]]:
    """The rows of a query, LOAD_CHUNK at a time (inside a transaction)."""
    cursor = await conn.cursor(query, *args)
    while rows := await cursor.fetch(LOAD_CHUNK):
        yield rows


class QuotaState:
    """The in-memory side: accounts by id, and the reservations of calls in flight."""

    def __init__(
        self, default_usd_per_flow: Fraction, insider_multiplier: Fraction = Fraction(5, 4), clock: Clock | None = None
    ) -> None:
        self.default_usd_per_flow = default_usd_per_flow
        self.clock = clock or SystemClock()
        """What load() reads the recent months by (the responder reads the same service clock)."""
        self.insider_multiplier = insider_multiplier
        self.accounts: dict[str, AccountQuota] = {}
        self.reservations = Reservations()
        """Estimates (micro-Flows) of the subscription calls admitted and not yet counted."""
        self.payg_reservations = Reservations()
        """Estimates (micro-USD) of the PAYG calls admitted and not yet counted."""
        self.flow_rate = Versioned(default_usd_per_flow)
        self.rate_limits: dict[str, datetime] = {}
        """GCRA state per account (the theoretical arrival time); memory only, like reservations:
        after a start both are rebuilt from the gateways' heartbeats (services/quota/inflight.py)."""
        self.released_while_rebuilding: set[str] | None = None
        """Once quota hears heartbeats (a set then): the reservations whose usage the projection
        applied lately, so that a heartbeat listing such a call a last time does not hold it again
        (services/quota/inflight.py forgets them after a few intervals)."""
        self.loading = asyncio.Lock()

    async def load(self, conn: asyncpg.Connection, schema: str, partitions: Collection[int] | None = None) -> None:
        """Rebuild memory from the projection (at start, and after a replay swapped its tables).
        Reservations and rate limits are not in the tables: they stay as they are. With `partitions`,
        only those partitions' accounts (a partition taken over, or those an instance owns after a
        replay) are read again, by the accounts' `partition` column, and replace those in memory;
        the others stay as they are, and the Flow rates are merged. One load at a time: a take-over's
        load that read the tables before a replay's swap ends before the replay's reload begins.

        Read in one snapshot, a chunk of rows at a time (a million accounts' rows fetched at once
        would hold twice the memory the state needs), with the cyclic garbage collector paused: the
        state is millions of objects without cycles, and each collection while they are created
        would walk all those made before once more."""
        async with self.loading:
            collecting = gc.isenabled()
            gc.disable()
            try:
                if conn.is_in_transaction():
                    accounts, flow_rate = await self._read(conn, schema, partitions)
                else:
                    async with conn.transaction(readonly=True, isolation="repeatable_read"):
                        accounts, flow_rate = await self._read(conn, schema, partitions)
                if partitions is None:
                    self.accounts, self.flow_rate = accounts, flow_rate
                else:
                    self.accounts.update(accounts)
                    self.flow_rate.merge(flow_rate)
            finally:
                if collecting:
                    gc.enable()

    async def _read(
        self, conn: asyncpg.Connection, schema: str, partitions: Collection[int] | None
    ) -> tuple[dict[str, AccountQuota], Versioned]:
        book = await load_rate_book(
            conn, schema, self.default_usd_per_flow, share_unchanged=True, partitions=partitions
        )
        # The partition's rows of the other tables: by account, through the accounts of the partition
        # (an index scan on accounts.partition, then each table's index on account_id).
        only, args = by_partition(schema, partitions)
        accounts: dict[str, AccountQuota] = {}
        plans: dict[str, str] = {}  # one str per plan name, not one per row
        multipliers, insiders = book.multipliers, book.insiders
        async for rows in chunks(
            conn, f"SELECT account_id, created_at, extra_usage, payg_key_id FROM {schema}.accounts t {only}", *args
        ):
            for account_id, created_at, extra_usage, payg_key_id in rows:
                multiplier, insider = multipliers.pop(account_id), insiders.pop(account_id)
                accounts[account_id] = AccountQuota(
                    created_at, (), multiplier=multiplier, insider=insider, extra_usage=extra_usage,
                    payg_key_id=payg_key_id,
                )  # fmt: skip
        async for rows in chunks(
            conn, f"SELECT account_id, sum(amount_micros) FROM {schema}.ledger t {only} GROUP BY 1", *args
        ):
            for account_id, balance in rows:
                accounts[account_id].balance = int(balance)
        # An account's plans, while its rows come (they come by account); then sorted as apply() keeps
        # them: changes at one instant by plan.
        segments: list[Segment] = []
        last: AccountQuota | None = None
        async for rows in chunks(
            conn,
            f"""SELECT event_id, account_id, effective_at, plan, period_anchor, paid_until FROM {schema}.plan_history t
                {only} ORDER BY account_id, effective_at, event_id""",
            *args,
        ):
            for event_id, account_id, effective_at, plan, anchor, paid_until in rows:
                account = accounts[account_id]
                if account is not last:
                    if last is not None:
                        last.segments = sorted(segments) if len(segments) > 1 else segments
                    last, segments = account, []
                if effective_at == account.created_at:  # most accounts' first plan: one datetime, not three
                    effective_at = account.created_at
                if anchor == effective_at:
                    anchor = effective_at
                plan = plans.setdefault(plan, plan)
                segments.append(Segment(effective_at, plan, anchor, event_id, paid_until))
        if last is not None:
            last.segments = sorted(segments) if len(segments) > 1 else segments
        async for rows in chunks(  # microseconds since the epoch (exact: numeric): no datetimes to make
            conn,
            f"""SELECT DISTINCT ON (account_id, kind) account_id, kind = '5h',
                    (extract(epoch FROM started_at) * 1000000)::bigint, (extract(epoch FROM ends_at) * 1000000)::bigint,
                    flows_micros
                FROM {schema}.windows t {only} {"AND" if only else "WHERE"} kind IN ('5h', 'week')
                ORDER BY account_id, kind, started_at DESC""",
            *args,
        ):
            for account_id, five_hours, start_us, end_us, flows in rows:
                if five_hours:
                    accounts[account_id].packed_5h = pack_micros(start_us, end_us, flows, FIVE_HOURS)
                else:
                    accounts[account_id].packed_weekly = pack_micros(start_us, end_us, flows, ONE_WEEK)
        async for rows in chunks(
            conn,
            f"""SELECT account_id, started_at, flows_micros FROM {schema}.windows t {only}
                {"AND" if only else "WHERE"} kind = 'month' AND ends_at > ${len(args) + 1}""",
            *args,
            self.clock.now() - timedelta(days=40),
        ):
            for account_id, started_at, flows in rows:
                account = accounts[account_id]
                for segment in account.segments:  # a first period starts at its anchor: that datetime object
                    if segment.anchor == started_at:
                        started_at = segment.anchor
                account.months[started_at] = flows
        return accounts, book.flow_rate

    def multiplier(self, account: AccountQuota, when: datetime) -> Fraction:
        """The multiplier that prices the account's call made at `when` (libs.pricing.multipliers)."""
        return multiplier_at(account.multiplier, account.insider, self.insider_multiplier, when)
