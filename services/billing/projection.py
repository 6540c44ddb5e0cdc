"""billing's projection: money events into the history, plan changes into the subscriptions that
payments are decided from, usage into per-day, per-model costs and the abuse signals' evidence
(services/billing/abuse.py), and each account's insider mark (billing decides when a lapse to Free
ends it)."""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC
from operator import attrgetter

import asyncpg

from libs.eventlog.dispatch import EventHandlers, handles
from libs.eventlog.projection import AfterCommit, Applied
from proto.v1 import (
    AccountCreated,
    BalanceToppedUp,
    InsiderStatusEnded,
    InsiderStatusSet,
    PaymentRecorded,
    PlanChangeCancelled,
    PlanChanged,
    RefundSucceeded,
    UsageRecorded,
)
from services.billing import abuse, metrics

_USAGE_EVENT = "billing.usage_event"
"""The row type a batch's usage goes to Postgres as (migration billing_0010): in the live schema,
where a rebuild into a fresh schema finds it too."""
_UTC_ORIGIN = "timestamptz '2000-01-01 00:00:00+00'"
"""Whole UTC hours from here: `date_bin('1 hour', t, origin)` is t cut to its UTC hour, in integer
maths; `date_trunc('hour', t, 'UTC')`, the same hour, looks the zone up for each row (1-3 µs a row)."""
_usage_row = attrgetter("event_id", "account_id", "occurred_at", "model", "billing_mode", "flows_micros",
                        "usd_cost_micros", "key_id", "client_hash", "agent_hash")  # fmt: skip
"""A usage event's fields in billing.usage_event's order (all but the hour), as one tuple made in C."""


@dataclass(slots=True)
class BillingBatch:
    """What one batch collects, written with one statement per table after dispatch."""

    conn: asyncpg.Connection
    history: list[tuple[str, str, str, object, int, str | None, str | None, str | None]] = field(default_factory=list)
    usage: list[UsageRecorded] = field(default_factory=list)
    subscriptions: list[tuple[str, str, object, str, str, object]] = field(default_factory=list)
    accounts: list[tuple[str, object]] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    """Plan changes cancelled before they took effect."""


class BillingProjection(EventHandlers[BillingBatch]):
    name: str = "billing"
    category: str | None = None
    tables: tuple[str, ...] = (
        "checkpoints", "accounts", "history", "subscriptions", "usage_seen", "costs", "insiders",
        "abuse_clients", "abuse_hours",
    )  # fmt: skip

    def __init__(self, schema: str = "billing", *, metered: bool = True) -> None:
        self.schema = schema
        self.metered = metered
        """False for a rebuild: the payments and spend it applies again were counted on /metrics once."""

    def rebuilt_into(self, schema: str) -> "BillingProjection":
        return BillingProjection(schema, metered=False)

    async def reload(self, conn: asyncpg.Connection) -> None:
        """billing answers from its tables only: nothing in memory to reload."""

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        b = BillingBatch(conn)
        await self.dispatch(b, batch)
        history, usage, subscriptions, accounts, withdrawn = (
            b.history,
            b.usage,
            b.subscriptions,
            b.accounts,
            b.withdrawn,
        )
        if accounts:  # when each account began: no plan is in force before it
            await conn.executemany(
                f"INSERT INTO {self.schema}.accounts (account_id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                accounts,
            )
        payments: list[tuple[str, int]] = []
        if history:
            fresh = await conn.fetch(
                f"""INSERT INTO {self.schema}.history (event_id, account_id, kind, occurred_at, amount_micros, plan,
                                                       previous_plan, reference)
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[],
                                         $6::text[], $7::text[], $8::text[])
                    ON CONFLICT DO NOTHING RETURNING kind, plan, amount_micros""",
                *zip(*history, strict=True),
            )
            payments = [(row["plan"], row["amount_micros"]) for row in fresh if row["kind"] == "payment"]
        if subscriptions:
            await conn.executemany(
                f"""INSERT INTO {self.schema}.subscriptions (event_id, account_id, effective_at, plan, previous_plan,
                                                             paid_until)
                    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
                subscriptions,
            )
        if withdrawn:  # after the inserts: the change may be in this very batch
            await conn.execute(
                f"UPDATE {self.schema}.subscriptions SET withdrawn = true WHERE event_id = ANY($1::text[])", withdrawn
            )
            await conn.execute(f"DELETE FROM {self.schema}.history WHERE event_id = ANY($1::text[])", withdrawn)
        spend: dict[str, int] = defaultdict(int)  # PAYG micro-USD by model
        if usage:
            await self._count_usage(conn, usage, spend)

        if not self.metered:
            return None

        def after_commit() -> None:
            for plan, amount_micros in payments:
                metrics.payments.add(1, {"plan": plan})
                metrics.payment_amount_usd.add(amount_micros / 1_000_000, {"plan": plan})
            for model, usd_micros in spend.items():
                metrics.payg_spend_usd.add(usd_micros / 1_000_000, {"model": model})

        return after_commit

    @handles(AccountCreated)
    async def _account_created(self, b: BillingBatch, _seq: int, event: AccountCreated) -> None:
        b.accounts.append((event.account_id, event.occurred_at))

    @handles(PaymentRecorded)
    async def _payment(self, b: BillingBatch, _seq: int, event: PaymentRecorded) -> None:
        b.history.append((event.event_id, event.account_id, "payment", event.occurred_at,
                          event.amount_micros, event.plan, None, event.payment_ref))  # fmt: skip

    @handles(PlanChanged)
    async def _plan_changed(self, b: BillingBatch, _seq: int, event: PlanChanged) -> None:
        b.history.append((event.event_id, event.account_id, "plan_change", event.occurred_at, 0,
                          event.plan, event.previous_plan, event.reason))  # fmt: skip
        b.subscriptions.append((event.event_id, event.account_id, event.occurred_at, event.plan,
                                event.previous_plan, event.paid_until))  # fmt: skip

    @handles(PlanChangeCancelled)
    async def _plan_change_cancelled(self, b: BillingBatch, _seq: int, event: PlanChangeCancelled) -> None:
        b.withdrawn.append(event.plan_change_id)

    @handles(BalanceToppedUp)
    async def _topped_up(self, b: BillingBatch, _seq: int, event: BalanceToppedUp) -> None:
        b.history.append((event.event_id, event.account_id, "top_up", event.occurred_at,
                          event.amount_micros, None, None, event.topup_ref))  # fmt: skip

    @handles(RefundSucceeded)
    async def _refunded(self, b: BillingBatch, _seq: int, event: RefundSucceeded) -> None:
        b.history.append((event.event_id, event.account_id, "refund", event.occurred_at,
                          event.amount_micros, None, None, event.refund_id))  # fmt: skip

    @handles(UsageRecorded)
    async def _usage(self, b: BillingBatch, _seq: int, event: UsageRecorded) -> None:
        b.usage.append(event)

    @handles(InsiderStatusSet, InsiderStatusEnded)
    async def _insider(self, b: BillingBatch, _seq: int, event: InsiderStatusSet | InsiderStatusEnded) -> None:
        """The account's latest mark, and its end. Applied in the account's log order, so the row
        is the last mark whatever the batches."""
        if isinstance(event, InsiderStatusSet):
            await b.conn.execute(
                f"""INSERT INTO {self.schema}.insiders (account_id, status_id, marked_at, insider, ended_at)
                    VALUES ($1, $2, $3, $4, NULL)
                    ON CONFLICT (account_id) DO UPDATE SET status_id = EXCLUDED.status_id,
                        marked_at = EXCLUDED.marked_at, insider = EXCLUDED.insider, ended_at = NULL""",
                event.account_id, event.event_id, event.occurred_at, event.insider,
            )  # fmt: skip
        else:
            await b.conn.execute(
                f"UPDATE {self.schema}.insiders SET ended_at = $3 WHERE account_id = $1 AND status_id = $2",
                event.account_id, event.insider_status_id, event.occurred_at,
            )  # fmt: skip

    async def _count_usage(self, conn: asyncpg.Connection, usage: list[UsageRecorded], spend: dict[str, int]) -> None:
        """Count each usage event not counted before (each once, however often the log holds it) into
        the costs and the abuse evidence (abuse.py), and the PAYG spend by model into `spend`: ONE
        statement for the batch. The events go as one array of billing.usage_event rows (the first of
        a batch's duplicates only), each read off the event in one C call; Postgres keeps the fresh
        ones (their event_id new to usage_seen), works out what each counts (Flows and the hour for a
        subscription call, PAYG or not) and aggregates them per account, day and model, per client and
        per hour. The PAYG balance is not billing's: quota owns it (it admits PAYG calls against it on
        the hot path) and billing's history asks quota."""
        if len({event.event_id for event in usage}) < len(usage):  # a duplicate: the first one may count
            usage = list({event.event_id: event for event in reversed(usage)}.values())
        rows = [
            (*_usage_row(event), None if event.occurred_at.tzinfo is UTC else abuse.hour_of(event.occurred_at))
            for event in usage
        ]
        schema = self.schema
        counted = await conn.fetch(
            f"""WITH batch AS (
                    SELECT event_id, account_id, occurred_at, model, usd_cost_micros AS usd_micros, key_id,
                           client_hash, agent_hash, billing_mode = 'payg' AS payg,
                           CASE WHEN billing_mode = 'subscription' THEN flows_micros ELSE 0 END AS flows_micros,
                           CASE WHEN billing_mode = 'subscription'
                                THEN coalesce(hour, date_bin('1 hour', occurred_at, {_UTC_ORIGIN})) END AS hour
                    FROM unnest($1::{_USAGE_EVENT}[])
                ), fresh AS (
                    INSERT INTO {schema}.usage_seen (event_id) SELECT event_id FROM batch
                    ON CONFLICT DO NOTHING RETURNING event_id
                ), counted AS (
                    SELECT batch.* FROM batch JOIN fresh USING (event_id)
                ), costs AS (
                    INSERT INTO {schema}.costs AS c (account_id, day, model, calls, flows_micros, usd_micros)
                    SELECT account_id, (occurred_at AT TIME ZONE 'UTC')::date, model, count(*), sum(flows_micros),
                           sum(usd_micros)
                    FROM counted GROUP BY 1, 2, 3
                    ON CONFLICT (account_id, day, model) DO UPDATE SET calls = c.calls + EXCLUDED.calls,
                        flows_micros = c.flows_micros + EXCLUDED.flows_micros,
                        usd_micros = c.usd_micros + EXCLUDED.usd_micros
                ), clients AS (
                    INSERT INTO {schema}.abuse_clients AS c (account_id, key_id, client_hash, agent_hash, first_seen,
                                                             last_seen, calls)
                    SELECT account_id, coalesce(key_id, ''), client_hash, coalesce(agent_hash, ''), min(occurred_at),
                           max(occurred_at), count(*)
                    FROM counted WHERE client_hash <> '' GROUP BY 1, 2, 3, 4
                    ON CONFLICT (account_id, key_id, client_hash, agent_hash) DO UPDATE SET
                        first_seen = least(c.first_seen, EXCLUDED.first_seen),
                        last_seen = greatest(c.last_seen, EXCLUDED.last_seen), calls = c.calls + EXCLUDED.calls
                ), hours AS (
                    INSERT INTO {schema}.abuse_hours AS h (account_id, hour, calls, flows_micros)
                    SELECT account_id, hour, count(*), sum(flows_micros) FROM counted WHERE hour IS NOT NULL
                    GROUP BY 1, 2
                    ON CONFLICT (account_id, hour) DO UPDATE SET calls = h.calls + EXCLUDED.calls,
                        flows_micros = h.flows_micros + EXCLUDED.flows_micros
                )
                SELECT model, sum(usd_micros)::bigint AS usd_micros FROM counted WHERE payg GROUP BY model""",
            rows,
        )
        for row in counted:
            spend[row["model"]] += row["usd_micros"]
