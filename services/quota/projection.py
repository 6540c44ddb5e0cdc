"""quota's projection: usage and plan events into Postgres, then into memory after commit.

Postgres holds every usage event (unique by event_id: duplicates count once, forever)
and every window. Memory holds, per account, what admission reads: the plan history,
the latest 5-hour and weekly window and the monthly totals. Memory changes only after
the transaction that wrote the same change has committed.
"""

import gc
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction

import asyncpg

from libs.clock import Clock, SystemClock
from libs.eventlog.dispatch import EventHandlers, handles
from libs.eventlog.runner import AfterCommit, Applied
from libs.pricing.catalog import FREE
from libs.pricing.flows import Versioned
from libs.pricing.money import parse_fraction
from libs.pricing.multipliers import multiplier_at, unchanged_multiplier
from libs.pricing.ratebook import load_rate_book
from proto.v1 import (
    AccountCreated,
    BalanceToppedUp,
    ExtraUsageChanged,
    FlowRateChanged,
    InsiderStatusEnded,
    InsiderStatusSet,
    MultiplierChanged,
    PlanChangeCancelled,
    PlanChanged,
    UsageRecorded,
)
from services.quota import metrics
from services.quota.domain.admission import AccountQuota
from services.quota.domain.periods import Period, Segment, period_at
from services.quota.domain.windows import CHAINS, ChainKind, Usage, Window, WindowKind, add_usages, chain
from services.quota.reservations import Reservations

LOAD_CHUNK = 10_000
"""Rows fetched at a time when memory is loaded from the tables."""


async def chunks(conn: asyncpg.Connection, query: str, *args: object) -> AsyncIterator[list[asyncpg.Record]]:
    """The rows of a query, LOAD_CHUNK at a time (inside a transaction)."""
    cursor = await conn.cursor(query, *args)
    while rows := await cursor.fetch(LOAD_CHUNK):
        yield rows


class UnknownAccount(Exception):
    """Usage for an account the log never created: a poison event, not a retry."""


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

    async def load(self, conn: asyncpg.Connection, schema: str, only: Callable[[str], bool] | None = None) -> None:
        """Rebuild memory from the projection (at start, and after a replay swapped its tables).
        Reservations and rate limits are not in the tables: they stay as they are. With `only`,
        the accounts it accepts (a partition taken over from another instance) are read again and
        replace those in memory; the others stay as they are, and the Flow rates are merged.

        Read in one snapshot, a chunk of rows at a time (a million accounts' rows fetched at once
        would hold twice the memory the state needs), with the cyclic garbage collector paused: the
        state is millions of objects without cycles, and each collection while they are created
        would walk all those made before once more."""
        collecting = gc.isenabled()
        gc.disable()
        try:
            if conn.is_in_transaction():
                accounts, flow_rate = await self._read(conn, schema, only)
            else:
                async with conn.transaction(readonly=True, isolation="repeatable_read"):
                    accounts, flow_rate = await self._read(conn, schema, only)
            if only is None:
                self.accounts, self.flow_rate = accounts, flow_rate
            else:
                self.accounts.update(accounts)
                self.flow_rate.merge(flow_rate)
        finally:
            if collecting:
                gc.enable()

    async def _read(
        self, conn: asyncpg.Connection, schema: str, only: Callable[[str], bool] | None = None
    ) -> tuple[dict[str, AccountQuota], Versioned]:
        book = await load_rate_book(conn, schema, self.default_usd_per_flow, share_unchanged=True)
        accounts: dict[str, AccountQuota] = {}
        plans: dict[str, str] = {}  # one str per plan name, not one per row
        multipliers, insiders = book.multipliers, book.insiders
        async for rows in chunks(
            conn, f"SELECT account_id, created_at, extra_usage, payg_key_id FROM {schema}.accounts"
        ):
            for account_id, created_at, extra_usage, payg_key_id in rows:
                if only is not None and not only(account_id):
                    continue
                multiplier, insider = multipliers.pop(account_id), insiders.pop(account_id)
                accounts[account_id] = AccountQuota(
                    created_at, [], multiplier=multiplier, insider=insider, extra_usage=extra_usage,
                    payg_key_id=payg_key_id,
                )  # fmt: skip
        async for rows in chunks(conn, f"SELECT account_id, sum(amount_micros) FROM {schema}.ledger GROUP BY 1"):
            for account_id, balance in rows:
                if only is not None and account_id not in accounts:
                    continue
                accounts[account_id].balance = int(balance)
        async for rows in chunks(
            conn,
            f"""SELECT event_id, account_id, effective_at, plan, period_anchor, paid_until FROM {schema}.plan_history
                ORDER BY account_id, effective_at, event_id""",
        ):
            for event_id, account_id, effective_at, plan, anchor, paid_until in rows:
                if only is not None and account_id not in accounts:
                    continue
                account = accounts[account_id]
                if effective_at == account.created_at:  # most accounts' first plan: one datetime, not three
                    effective_at = account.created_at
                if anchor == effective_at:
                    anchor = effective_at
                plan = plans.setdefault(plan, plan)
                account.segments.append(Segment(effective_at, plan, anchor, event_id, paid_until))
        for account in accounts.values():  # in the order apply() keeps them: changes at one instant by plan
            account.segments.sort()
        async for rows in chunks(
            conn,
            f"""SELECT DISTINCT ON (account_id, kind) account_id, kind = '5h', started_at, ends_at, flows_micros
                FROM {schema}.windows WHERE kind IN ('5h', 'week')
                ORDER BY account_id, kind, started_at DESC""",
        ):
            for account_id, five_hours, started_at, ends_at, flows in rows:
                if only is not None and account_id not in accounts:
                    continue
                if five_hours:
                    accounts[account_id].window_5h = Window(started_at, ends_at, flows)
                else:
                    accounts[account_id].weekly = Window(started_at, ends_at, flows)
        async for rows in chunks(
            conn,
            f"""SELECT account_id, started_at, flows_micros FROM {schema}.windows
                WHERE kind = 'month' AND ends_at > $1""",
            self.clock.now() - timedelta(days=40),
        ):
            for account_id, started_at, flows in rows:
                if only is not None and account_id not in accounts:
                    continue
                account = accounts[account_id]
                for segment in account.segments:  # a first period starts at its anchor: that datetime object
                    if segment.anchor == started_at:
                        started_at = segment.anchor
                account.months[started_at] = flows
        return accounts, book.flow_rate

    def multiplier(self, account: AccountQuota, when: datetime) -> Fraction:
        """The multiplier that prices the account's call made at `when` (libs.pricing.multipliers)."""
        return multiplier_at(account.multiplier, account.insider, self.insider_multiplier, when)


@dataclass(slots=True)
class QuotaBatch:
    """One batch's changes: accounts as they will be after commit, and the usage and rates collected."""

    conn: asyncpg.Connection
    pending: dict[str, AccountQuota] = field(default_factory=dict)
    usage: list[tuple[int, UsageRecorded]] = field(default_factory=list)
    rates: list[FlowRateChanged] = field(default_factory=list)


class QuotaProjection(EventHandlers[QuotaBatch]):
    name: str = "quota"
    category: str | None = None
    tables: tuple[str, ...] = (
        "checkpoints", "accounts", "plan_history", "multipliers", "insider", "flow_rates", "ledger", "usage", "windows",
    )  # fmt: skip

    def __init__(self, state: QuotaState, schema: str = "quota", *, metered: bool = True) -> None:
        self.state = state
        self.schema = schema
        self.metered = metered
        """False for a rebuild: the Flows it applies again were counted on /metrics once already."""

    def rebuilt_into(self, schema: str) -> "QuotaProjection":
        state = QuotaState(self.state.default_usd_per_flow, self.state.insider_multiplier, self.state.clock)
        return QuotaProjection(state, schema, metered=False)

    async def reload(self, conn: asyncpg.Connection) -> None:
        await self.state.load(conn, self.schema)

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        b = QuotaBatch(conn)
        await self.dispatch(b, batch)
        pending, usage, rates = b.pending, b.usage, b.rates
        released: list[tuple[str, str]] = []
        consumed: dict[tuple[str, str], int] = defaultdict(int)  # micro-Flows by (model, plan)
        if usage:
            released = await self._usage_recorded(conn, usage, pending, consumed)
        if not self.metered:
            consumed.clear()

        def after_commit() -> None:
            self.state.accounts.update(pending)
            for rate in rates:
                self.state.flow_rate.add(rate.event_id, rate.occurred_at, parse_fraction(rate.usd_per_flow))
            for account_id, reservation_id in released:
                self.state.reservations.release(account_id, reservation_id)
                self.state.payg_reservations.release(account_id, reservation_id)
                if self.state.released_while_rebuilding is not None:
                    self.state.released_while_rebuilding.add(reservation_id)
            for (model, plan), flows_micros in consumed.items():
                metrics.flows_consumed.add(flows_micros / 1_000_000, {"model": model, "plan": plan})

        return after_commit

    def _pending(self, account_id: str, pending: dict[str, AccountQuota]) -> AccountQuota:
        if account_id not in pending:
            known = self.state.accounts.get(account_id)
            if known is None:
                raise UnknownAccount(account_id)
            pending[account_id] = known.copy()
        return pending[account_id]

    @handles(UsageRecorded)
    async def _usage(self, b: QuotaBatch, seq: int, event: UsageRecorded) -> None:
        b.usage.append((seq, event))

    @handles(FlowRateChanged)
    async def _flow_rate_changed(self, b: QuotaBatch, _seq: int, event: FlowRateChanged) -> None:
        await b.conn.execute(
            f"""INSERT INTO {self.schema}.flow_rates (event_id, effective_at, usd_per_flow)
                VALUES ($1, $2, $3) ON CONFLICT DO NOTHING""",
            event.event_id, event.occurred_at, event.usd_per_flow,
        )  # fmt: skip
        b.rates.append(event)

    @handles(ExtraUsageChanged)
    async def _extra_usage_changed(self, b: QuotaBatch, _seq: int, event: ExtraUsageChanged) -> None:
        account = self._pending(event.account_id, b.pending)
        await b.conn.execute(
            f"UPDATE {self.schema}.accounts SET extra_usage = $2, payg_key_id = $3 WHERE account_id = $1",
            event.account_id, event.enabled, event.payg_key_id,
        )  # fmt: skip
        account.extra_usage, account.payg_key_id = event.enabled, event.payg_key_id

    @handles(AccountCreated)
    async def _account_created(self, b: QuotaBatch, _seq: int, event: AccountCreated) -> None:
        conn, pending = b.conn, b.pending
        if event.account_id in pending or event.account_id in self.state.accounts:
            return
        await conn.execute(
            f"""INSERT INTO {self.schema}.accounts (account_id, created_at, multiplier) VALUES ($1, $2, $3)
                ON CONFLICT DO NOTHING""",
            event.account_id, event.occurred_at, event.multiplier,
        )  # fmt: skip
        segment = Segment(event.occurred_at, FREE, event.occurred_at, event.event_id)
        await self._insert_segment(conn, event.account_id, segment)
        pending[event.account_id] = AccountQuota(
            event.occurred_at, [segment], multiplier=unchanged_multiplier(parse_fraction(event.multiplier))
        )

    @handles(BalanceToppedUp)
    async def _topped_up(self, b: QuotaBatch, _seq: int, event: BalanceToppedUp) -> None:
        conn, pending = b.conn, b.pending
        account = self._pending(event.account_id, pending)
        credited = await conn.fetchval(
            f"""INSERT INTO {self.schema}.ledger (event_id, account_id, amount_micros, kind, occurred_at)
                VALUES ($1, $2, $3, 'top_up', $4) ON CONFLICT DO NOTHING RETURNING true""",
            event.event_id, event.account_id, event.amount_micros, event.occurred_at,
        )  # fmt: skip
        if credited:
            account.balance += event.amount_micros

    @handles(MultiplierChanged)
    async def _multiplier_changed(self, b: QuotaBatch, _seq: int, event: MultiplierChanged) -> None:
        conn, pending = b.conn, b.pending
        account = self._pending(event.account_id, pending)
        await conn.execute(
            f"""INSERT INTO {self.schema}.multipliers (event_id, account_id, effective_at, multiplier)
                VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            event.event_id, event.account_id, event.occurred_at, event.multiplier,
        )  # fmt: skip
        account.with_multiplier(event.event_id, event.occurred_at, parse_fraction(event.multiplier))

    @handles(InsiderStatusSet, InsiderStatusEnded)
    async def _insider_changed(self, b: QuotaBatch, _seq: int, event: InsiderStatusSet | InsiderStatusEnded) -> None:
        conn, pending = b.conn, b.pending
        account = self._pending(event.account_id, pending)
        insider = isinstance(event, InsiderStatusSet) and event.insider
        await conn.execute(
            f"""INSERT INTO {self.schema}.insider (event_id, account_id, effective_at, insider)
                VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            event.event_id, event.account_id, event.occurred_at, insider,
        )  # fmt: skip
        account.with_insider(event.event_id, event.occurred_at, insider)

    async def _insert_segment(self, conn: asyncpg.Connection, account_id: str, segment: Segment) -> bool:
        inserted = await conn.fetchval(
            f"""INSERT INTO {self.schema}.plan_history (event_id, account_id, effective_at, plan, period_anchor,
                                                         paid_until)
                VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true""",
            segment.event_id,
            account_id,
            segment.effective_at,
            segment.plan,
            segment.anchor,
            segment.paid_until,
        )
        return bool(inserted)

    @handles(PlanChanged)
    async def _plan_changed(self, b: QuotaBatch, _seq: int, event: PlanChanged) -> None:
        conn, pending = b.conn, b.pending
        account = self._pending(event.account_id, pending)
        segment = Segment(event.occurred_at, event.plan, event.period_anchor, event.event_id, event.paid_until)
        if not await self._insert_segment(conn, event.account_id, segment):
            return
        old_period = period_at(account.segments, event.occurred_at)
        account.segments = sorted([*account.segments, segment])
        await self._recount_months(conn, event.account_id, account, since=old_period.start)

    @handles(PlanChangeCancelled)
    async def _plan_change_cancelled(self, b: QuotaBatch, _seq: int, event: PlanChangeCancelled) -> None:
        """A scheduled change withdrawn: the account's plans as if it had never been recorded."""
        conn, pending = b.conn, b.pending
        account = self._pending(event.account_id, pending)
        withdrawn = [s for s in account.segments if s.event_id == event.plan_change_id]
        if not withdrawn:
            return
        await conn.execute(f"DELETE FROM {self.schema}.plan_history WHERE event_id = $1", event.plan_change_id)
        old_period = period_at(account.segments, withdrawn[0].effective_at)
        account.segments = [s for s in account.segments if s.event_id != event.plan_change_id]
        await self._recount_months(conn, event.account_id, account, since=old_period.start)

    async def _recount_months(
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
        await self._add_months(conn, {(account_id, start, end): flows for (start, end), flows in totals.items()})
        for (start, _), flows in totals.items():
            account.months[start] = account.months.get(start, 0) + flows

    async def _usage_recorded(
        self,
        conn: asyncpg.Connection,
        usage: list[tuple[int, UsageRecorded]],
        pending: dict[str, AccountQuota],
        consumed: dict[tuple[str, str], int],
    ) -> list[tuple[str, str]]:
        events = [e for _, e in usage]
        for account_id in dict.fromkeys(e.account_id for e in events):
            self._pending(account_id, pending)
        inserted = await conn.fetch(
            f"""INSERT INTO {self.schema}.usage (event_id, account_id, occurred_at, model, input_tokens,
                    output_tokens, cached_tokens, images, billing_mode, key_id, usd_cost_micros,
                    flows_micros, usd_per_flow, multiplier, stream_seq, conversation_id)
                SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[],
                    $6::bigint[], $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::bigint[],
                    $12::bigint[], $13::text[], $14::text[], $15::bigint[], $16::text[])
                ON CONFLICT (event_id) DO NOTHING RETURNING event_id""",
            [e.event_id for e in events], [e.account_id for e in events], [e.occurred_at for e in events],
            [e.model for e in events], [e.input_tokens for e in events], [e.output_tokens for e in events],
            [e.cached_tokens for e in events], [e.images for e in events], [e.billing_mode for e in events],
            [e.key_id for e in events], [e.usd_cost_micros for e in events], [e.flows_micros for e in events],
            [e.usd_per_flow for e in events], [e.multiplier for e in events], [seq for seq, _ in usage],
            [e.conversation_id for e in events],
        )  # fmt: skip
        fresh_ids = {row[0] for row in inserted}
        counted: dict[str, list[UsageRecorded]] = defaultdict(list)
        debits: list[UsageRecorded] = []
        for event in events:
            if event.event_id not in fresh_ids:
                continue
            fresh_ids.discard(event.event_id)  # a duplicate inside the batch counts once too
            if event.billing_mode == "subscription":
                counted[event.account_id].append(event)
            else:
                debits.append(event)
        if counted:
            await self._count(conn, counted, pending, consumed)
        if debits:
            await conn.execute(
                f"""INSERT INTO {self.schema}.ledger (event_id, account_id, amount_micros, kind, occurred_at)
                    SELECT e, a, -c, 'payg_usage', t
                    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[]) AS d(e, a, c, t)""",
                [e.event_id for e in debits], [e.account_id for e in debits],
                [e.usd_cost_micros for e in debits], [e.occurred_at for e in debits],
            )  # fmt: skip
            for event in debits:
                pending[event.account_id].balance -= event.usd_cost_micros
        return [(e.account_id, e.reservation_id) for e in events if e.reservation_id]

    async def _count(
        self,
        conn: asyncpg.Connection,
        counted: dict[str, list[UsageRecorded]],
        pending: dict[str, AccountQuota],
        consumed: dict[tuple[str, str], int],
    ) -> None:
        """Add the batch's subscription usage to the windows, aggregated per account and window: one
        row per window changed, written with one statement for the whole batch.

        Memory holds each chain's latest window, which is all of the chain's suffix unless a call
        falls before that window's start (a late call): only then are the earlier windows read."""
        late: dict[str, datetime] = {}
        for account_id, events in counted.items():
            events.sort(key=lambda e: (e.occurred_at, e.event_id))
            account, first = pending[account_id], events[0].occurred_at
            if (account.window_5h is not None and first < account.window_5h.start) or (
                account.weekly is not None and first < account.weekly.start
            ):
                late[account_id] = first
        suffixes = await self._load_suffixes(conn, late) if late else {}
        upserts: list[tuple[str, WindowKind, Window]] = []
        months: dict[tuple[str, datetime, datetime], int] = defaultdict(int)
        for account_id, events in counted.items():
            account = pending[account_id]
            usages = [Usage(e.occurred_at, e.flows_micros) for e in events]
            first = usages[0].at
            for kind, duration in CHAINS.items():
                if account_id in late:
                    loaded = suffixes.get((account_id, kind), [])
                else:
                    latest = account.window_5h if kind == "5h" else account.weekly
                    loaded = [latest] if latest is not None and latest.end > first else []
                windows, rechain_from = add_usages(loaded, usages, duration)
                unchanged = set(loaded)
                if rechain_from is not None:
                    windows += await self._rechain(conn, account_id, kind, duration, rechain_from)
                    unchanged = {w for w in unchanged if w.start < rechain_from}
                upserts += [(account_id, kind, w) for w in windows if w not in unchanged]
                if windows:
                    latest = windows[-1]
                    if kind == "5h":
                        account.window_5h = latest
                    else:
                        account.weekly = latest
            period: Period | None = None
            for event in events:  # in time order: most fall in the period of the one before
                at = event.occurred_at
                if period is None or not period.start <= at < period.end:
                    period = period_at(account.segments, at)
                months[(account_id, period.start, period.end)] += event.flows_micros
                account.months[period.start] = account.months.get(period.start, 0) + event.flows_micros
                consumed[(event.model, account.plan_at(at))] += event.flows_micros
        upserts += [(a, "month", Window(start, end, flows)) for (a, start, end), flows in months.items()]
        await conn.execute(
            f"""INSERT INTO {self.schema}.windows AS w (account_id, kind, started_at, ends_at, flows_micros)
                SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], $5::bigint[])
                ON CONFLICT (account_id, kind, started_at) DO UPDATE SET
                    ends_at = CASE WHEN w.kind = 'month' THEN w.ends_at ELSE EXCLUDED.ends_at END,
                    flows_micros = CASE WHEN w.kind = 'month' THEN w.flows_micros + EXCLUDED.flows_micros
                                        ELSE EXCLUDED.flows_micros END""",
            [a for a, _, _ in upserts],
            [k for _, k, _ in upserts],
            [w.start for _, _, w in upserts],
            [w.end for _, _, w in upserts],
            [w.flows for _, _, w in upserts],
        )

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

    async def _add_months(self, conn: asyncpg.Connection, months: dict[tuple[str, datetime, datetime], int]) -> None:
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
