"""The refund projection's tables as the desk reads them: the account's payments, plans, refunds
and the usage a refund counts."""

from collections.abc import Sequence

import asyncpg

from services.refund.domain import Payment, Period, PlanSpan


async def latest_payment(conn: asyncpg.Connection, schema: str, account_id: str) -> Payment | None:
    row = await conn.fetchrow(
        f"""SELECT payment_ref, plan, paid_at, amount_micros FROM {schema}.payments
            WHERE account_id = $1 ORDER BY paid_at DESC, event_id DESC LIMIT 1""",
        account_id,
    )
    return Payment(**dict(row)) if row else None


async def plans(conn: asyncpg.Connection, schema: str, account_id: str) -> list[PlanSpan]:
    rows = await conn.fetch(
        f"SELECT effective_at, plan, paid_until FROM {schema}.plans WHERE account_id = $1", account_id
    )
    return [PlanSpan(**dict(row)) for row in rows]


async def change_of(
    conn: asyncpg.Connection, schema: str, account_id: str, payment_ref: str
) -> tuple[str | None, PlanSpan | None]:
    """The plan change the payment bought (its event id and span), unless it is not known."""
    row = await conn.fetchrow(
        f"""SELECT event_id, effective_at, plan, paid_until FROM {schema}.plans
            WHERE account_id = $1 AND payment_ref = $2 ORDER BY effective_at DESC LIMIT 1""",
        account_id,
        payment_ref,
    )
    if row is None:
        return None, None
    return row["event_id"], PlanSpan(row["effective_at"], row["plan"], row["paid_until"])


async def refunds_of(conn: asyncpg.Connection, schema: str, account_id: str, payment_ref: str) -> list[tuple[str, int]]:
    """(status, amount) of every refund of the payment."""
    rows = await conn.fetch(
        f"SELECT status, amount_micros FROM {schema}.refunds WHERE account_id = $1 AND payment_ref = $2",
        account_id,
        payment_ref,
    )
    return [(row["status"], row["amount_micros"]) for row in rows]


async def usage(
    conn: asyncpg.Connection, schema: str, account_id: str, period: Period, cutoff: int, pending: Sequence[str]
) -> int:
    """The API value of the subscription calls in the payment's period (PAYG calls were paid from
    the balance): those stored up to the cut-off, and those that were in flight at the request."""
    value = await conn.fetchval(
        f"""SELECT coalesce(sum(usd_cost_micros), 0) FROM {schema}.usage
            WHERE account_id = $1 AND billing_mode = 'subscription' AND occurred_at >= $2
              AND ($3::timestamptz IS NULL OR occurred_at < $3)
              AND (seq <= $4 OR reservation_id = ANY($5::text[]))""",
        account_id,
        period.start,
        period.end,
        cutoff,
        list(pending),
    )
    return int(value)
