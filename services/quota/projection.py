"""quota's projection: usage and plan events into Postgres, then into memory (state.py) after commit.

Postgres holds every usage event (unique by event_id: duplicates count once, forever)
and every window. Memory holds, per account, what admission reads: the plan history,
the latest 5-hour and weekly window and the monthly totals. Memory changes only after
the transaction that wrote the same change has committed.
"""

from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import asyncpg

from libs.eventlog.dispatch import EventHandlers, handles
from libs.eventlog.projection import AfterCommit, Applied
from libs.eventlog.subjects import partition_for
from libs.pricing.catalog import FREE
from libs.pricing.money import parse_fraction
from libs.pricing.multipliers import unchanged_multiplier
from libs.settings import DEFAULT_PARTITIONS
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
from services.quota.domain.periods import Segment, period_at
from services.quota.state import QuotaState
from services.quota.windows_tables import WindowTables


class UnknownAccount(Exception):
    """Usage for an account the log never created: a poison event, not a retry."""


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

    def __init__(
        self, state: QuotaState, schema: str = "quota", *, metered: bool = True, partitions: int = DEFAULT_PARTITIONS
    ) -> None:
        self.state = state
        self.schema = schema
        self.windows = WindowTables(schema)
        self.metered = metered
        """False for a rebuild: the Flows it applies again were counted on /metrics once already."""
        self.partitions = partitions
        """The event stream's: each account's partition is kept with it (accounts.partition)."""
        self.reloaded: Callable[[], Collection[int]] | None = None
        """The partitions whose accounts a reload after a replay's swap reads (those this instance
        projects: services/quota/partitions.py); None: every account."""

    def rebuilt_into(self, schema: str) -> "QuotaProjection":
        state = QuotaState(self.state.default_usd_per_flow, self.state.insider_multiplier, self.state.clock)
        return QuotaProjection(state, schema, metered=False, partitions=self.partitions)

    async def reload(self, conn: asyncpg.Connection) -> None:
        await self.state.load(conn, self.schema, None if self.reloaded is None else self.reloaded())

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
            f"""INSERT INTO {self.schema}.accounts (account_id, created_at, multiplier, partition)
                VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING""",
            event.account_id, event.occurred_at, event.multiplier, partition_for(event.account_id, self.partitions),
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
        await self.windows.recount_months(conn, event.account_id, account, since=old_period.start)

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
        await self.windows.recount_months(conn, event.account_id, account, since=old_period.start)

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
        # One array of the table's own row type rather than an array per column: asyncpg checks each
        # array element against collections.abc ABCs (about 24 checks per event over 16 columns,
        # 4 per row this way). The tuples follow quota.usage's column order.
        inserted = await conn.fetch(
            f"""INSERT INTO {self.schema}.usage SELECT * FROM unnest($1::{self.schema}.usage[])
                ON CONFLICT (event_id) DO NOTHING RETURNING event_id""",
            [
                (e.event_id, e.account_id, e.occurred_at, e.model, e.input_tokens, e.output_tokens, e.cached_tokens,
                 e.images, e.billing_mode, e.key_id, e.usd_cost_micros, e.flows_micros, e.usd_per_flow, e.multiplier,
                 seq, e.conversation_id)
                for seq, e in usage
            ],
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
            await self.windows.count(conn, counted, pending, consumed if self.metered else None)
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
