"""refund's projection: payments, plan changes and usage (what a refund is computed from),
and the refunds and payouts themselves, from the events. Every write is idempotent, so the
rows the command paths wrote first are written again harmlessly."""

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from libs.eventlog.dispatch import EventHandlers, handles
from libs.eventlog.projection import AfterCommit, Applied
from proto.v1 import (
    PaymentRecorded,
    PlanChangeCancelled,
    PlanChanged,
    RefundCancelled,
    RefundFailed,
    RefundPaidOut,
    RefundPayoutStarted,
    RefundRequested,
    RefundSucceeded,
    UsageRecorded,
)

UsageRow = tuple[str, str, int, object, int, str | None, str]


@dataclass(slots=True)
class RefundBatch:
    conn: asyncpg.Connection
    usage: list[UsageRow] = field(default_factory=list)


class RefundProjection(EventHandlers[RefundBatch]):
    name: str = "refund"
    category: str | None = None
    tables: tuple[str, ...] = ("checkpoints", "payments", "plans", "usage", "refunds", "payouts")

    def __init__(self, schema: str = "refund") -> None:
        self.schema = schema

    def rebuilt_into(self, schema: str) -> "RefundProjection":
        return RefundProjection(schema)

    async def reload(self, conn: asyncpg.Connection) -> None:
        """refund answers from its tables only: nothing in memory to reload."""

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        b = RefundBatch(conn)
        await self.dispatch(b, batch)
        if b.usage:  # one statement for the batch: usage is most of the log
            # One array of the table's own row type (UsageRow follows refund.usage's column order)
            # rather than an array per column: asyncpg checks each array element against
            # collections.abc ABCs, and per column that is several checks per event.
            await conn.execute(
                f"""INSERT INTO {self.schema}.usage SELECT * FROM unnest($1::{self.schema}.usage[])
                    ON CONFLICT DO NOTHING""",
                b.usage,
            )
        return None

    @handles(UsageRecorded)
    async def _usage(self, b: RefundBatch, seq: int, event: UsageRecorded) -> None:
        b.usage.append((event.event_id, event.account_id, seq, event.occurred_at, event.usd_cost_micros,
                        event.reservation_id, event.billing_mode))  # fmt: skip

    @handles(PaymentRecorded)
    async def _payment(self, b: RefundBatch, _seq: int, event: PaymentRecorded) -> None:
        await b.conn.execute(
            f"""INSERT INTO {self.schema}.payments (event_id, account_id, payment_ref, plan, amount_micros, paid_at)
                VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
            event.event_id, event.account_id, event.payment_ref, event.plan, event.amount_micros, event.occurred_at,
        )  # fmt: skip

    @handles(PlanChanged)
    async def _plan_changed(self, b: RefundBatch, _seq: int, event: PlanChanged) -> None:
        await b.conn.execute(
            f"""INSERT INTO {self.schema}.plans (event_id, account_id, plan, effective_at, paid_until, payment_ref)
                VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
            event.event_id, event.account_id, event.plan, event.occurred_at, event.paid_until, event.payment_ref,
        )  # fmt: skip

    @handles(PlanChangeCancelled)
    async def _plan_change_cancelled(self, b: RefundBatch, _seq: int, event: PlanChangeCancelled) -> None:
        await b.conn.execute(f"DELETE FROM {self.schema}.plans WHERE event_id = $1", event.plan_change_id)

    @handles(RefundRequested)
    async def _requested(self, b: RefundBatch, _seq: int, event: RefundRequested) -> None:
        await insert_refund(b.conn, self.schema, event)

    @handles(RefundPayoutStarted)
    async def _payout_started(self, b: RefundBatch, _seq: int, event: RefundPayoutStarted) -> None:
        await start_payout(b.conn, self.schema, event)

    @handles(RefundPaidOut)
    async def _paid_out(self, b: RefundBatch, _seq: int, event: RefundPaidOut) -> None:
        await insert_payout(b.conn, self.schema, event)

    @handles(RefundSucceeded, RefundFailed, RefundCancelled)
    async def _settled(
        self, b: RefundBatch, _seq: int, event: RefundSucceeded | RefundFailed | RefundCancelled
    ) -> None:
        await settle_refund(b.conn, self.schema, event)


async def insert_refund(conn: asyncpg.Connection, schema: str, event: RefundRequested) -> bool:
    """The refund as requested (processing); False when the payment already has a live refund."""
    row = await conn.fetchrow(
        f"""INSERT INTO {schema}.refunds (refund_id, account_id, payment_ref, plan, paid_at, status, requested_at,
                                          updated_at, cutoff_seq, pending_reservations, paid_micros, usage_micros,
                                          refunded_before_micros, fee_micros, amount_micros)
            VALUES ($1, $2, $3, $4, $5, 'processing', $6, $6, $7, $8, $9, $10, $11, $12, $13)
            ON CONFLICT DO NOTHING RETURNING refund_id""",
        event.refund_id, event.account_id, event.payment_ref, event.plan, event.paid_at, event.occurred_at,
        event.cutoff_seq, event.pending_reservations, event.paid_micros, event.usage_micros,
        event.refunded_before_micros, event.fee_micros, event.amount_micros,
    )  # fmt: skip
    return row is not None


async def start_payout(conn: asyncpg.Connection, schema: str, event: RefundPayoutStarted) -> None:
    await conn.execute(
        f"UPDATE {schema}.refunds SET payout_started = true WHERE refund_id = $1 AND status = 'processing'",
        event.refund_id,
    )


async def insert_payout(conn: asyncpg.Connection, schema: str, event: RefundPaidOut) -> None:
    await conn.execute(
        f"""INSERT INTO {schema}.payouts (idempotency_key, payout_id, account_id, refund_id, amount_micros,
                                          provider, paid_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING""",
        event.idempotency_key, event.payout_id, event.account_id, event.refund_id, event.amount_micros,
        event.provider, event.occurred_at,
    )  # fmt: skip


async def settle_refund(
    conn: asyncpg.Connection, schema: str, event: RefundSucceeded | RefundFailed | RefundCancelled
) -> None:
    """processing → succeeded | failed | cancelled, once: a settled refund never changes again."""
    if isinstance(event, RefundSucceeded):
        await conn.execute(
            f"""UPDATE {schema}.refunds SET status = 'succeeded', updated_at = $2, payout_id = $3, usage_micros = $4,
                       refunded_before_micros = $5, fee_micros = $6, amount_micros = $7
                WHERE refund_id = $1 AND status = 'processing'""",
            event.refund_id, event.occurred_at, event.payout_id, event.usage_micros, event.refunded_before_micros,
            event.fee_micros, event.amount_micros,
        )  # fmt: skip
    elif isinstance(event, RefundCancelled):
        await conn.execute(
            f"""UPDATE {schema}.refunds SET status = 'cancelled', updated_at = $2, reason = $3, usage_micros = $4,
                       fee_micros = 0, amount_micros = 0
                WHERE refund_id = $1 AND status = 'processing'""",
            event.refund_id, event.occurred_at, event.reason, event.usage_micros,
        )  # fmt: skip
    else:
        await conn.execute(
            f"""UPDATE {schema}.refunds SET status = 'failed', updated_at = $2, reason = $3
                WHERE refund_id = $1 AND status = 'processing'""",
            event.refund_id, event.occurred_at, event.reason,
        )  # fmt: skip
