"""billing's queries: history, cost analysis and the abuse signals, read from its projection.

Every request is answered (libs.rpc): one that fails is answered with BillingCommandFailed, never
left to time out (its caller would take that for an outage and say "retry")."""

from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from libs.clock import Clock, SystemClock
from libs.rpc import Replier
from proto.v1 import (
    AbuseSignals,
    AbuseSignalsRequest,
    BillingEntry,
    BillingHistory,
    BillingHistoryRequest,
    CostLine,
    Costs,
    CostsRequest,
    rpc,
)
from services.billing import abuse, abuse_rules

BalanceOf = Callable[[str], Awaitable[int]]
"""The account's PAYG balance, micro-USD, as its owner (quota) has it."""


class BillingResponder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        balance_of: BalanceOf,
        weekly_caps: Mapping[str, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._balance_of = balance_of
        """quota owns the balance (it admits PAYG calls against it): billing reads it, keeps no copy."""
        self._weekly_caps = weekly_caps or {}
        """Each plan's weekly cap in micro-Flows: the around-the-clock rule's measure of a day."""
        self._clock = clock or SystemClock()

    def serve(self, runtime: Replier) -> None:
        runtime.reply(rpc.BILLING_HISTORY, self.history, invalid=(asyncpg.DataError,))
        runtime.reply(rpc.BILLING_COSTS, self.costs, invalid=(asyncpg.DataError,))
        runtime.reply(rpc.BILLING_ABUSE_SIGNALS, self.abuse_signals, invalid=(asyncpg.DataError,))

    async def abuse_signals(self, request: AbuseSignalsRequest) -> AbuseSignals:
        async with self._pool.acquire() as conn:
            clients, hours, accounts, plans = await abuse.evidence(
                conn, self._schema, self._clock.now(), clients_days=30, hours_days=14
            )
        scored = abuse_rules.score(accounts, clients, hours, plans, self._weekly_caps, request.min_score)
        return AbuseSignals(accounts=scored[: min(max(request.limit, 1), 1000)])

    async def history(self, request: BillingHistoryRequest) -> BillingHistory:
        rows = await self._pool.fetch(
            f"""SELECT event_id, kind, occurred_at, amount_micros, plan, previous_plan, reference
                FROM {self._schema}.history WHERE account_id = $1
                ORDER BY occurred_at DESC, event_id LIMIT $2""",
            request.account_id,
            min(max(request.limit, 1), 1000),
        )
        entries = [BillingEntry(**dict(row)) for row in rows]
        return BillingHistory(entries=entries, balance_micros=await self._balance_of(request.account_id))

    async def costs(self, request: CostsRequest) -> Costs:
        if request.group_by == "hour":
            return await self._hours(request)
        key = "model" if request.group_by == "model" else "to_char(day, 'YYYY-MM-DD')"
        rows = await self._pool.fetch(
            f"""SELECT {key} AS key, sum(calls)::bigint AS calls, sum(flows_micros)::bigint AS flows_micros,
                       sum(usd_micros)::bigint AS usd_micros
                FROM {self._schema}.costs
                WHERE account_id = $1 AND day >= $2::timestamptz::date AND day < $3::timestamptz::date + 1
                GROUP BY 1 ORDER BY 1""",
            request.account_id,
            request.since,
            request.until,
        )
        return Costs(lines=[CostLine(**dict(row)) for row in rows])

    async def _hours(self, request: CostsRequest) -> Costs:
        """The subscription's Flows per UTC hour (the hours the abuse evidence counts, every call
        billed to the subscription): what the console's usage chart draws, in the owner's zone.
        No USD: the hours keep Flows only."""
        rows = await self._pool.fetch(
            f"""SELECT to_char(hour AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:00:00"Z"') AS key, calls,
                       flows_micros, 0::bigint AS usd_micros
                FROM {self._schema}.abuse_hours
                WHERE account_id = $1 AND hour >= date_trunc('hour', $2::timestamptz) AND hour <= $3
                ORDER BY hour""",
            request.account_id,
            request.since,
            request.until,
        )
        return Costs(lines=[CostLine(**dict(row)) for row in rows])
