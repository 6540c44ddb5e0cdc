"""billing's request/reply subjects: history, cost analysis and the abuse signals, read from its
projection.

Every request is answered: one that fails is answered with BillingCommandFailed, never left to
time out (its caller would take that for an outage and say "retry")."""

import logging
from collections.abc import Awaitable, Callable, Mapping

import asyncpg
import msgspec
from nats.aio.msg import Msg

from libs.clock import Clock, SystemClock
from proto.v1 import (
    AbuseSignals,
    AbuseSignalsRequest,
    BillingCommandFailed,
    BillingEntry,
    BillingHistory,
    BillingHistoryRequest,
    CostLine,
    Costs,
    CostsRequest,
    encode,
)
from services.billing import abuse, abuse_rules

log = logging.getLogger(__name__)


def answering(handler: Callable[[Msg], Awaitable[msgspec.Struct]]) -> Callable[[Msg], Awaitable[None]]:
    async def answer(msg: Msg) -> None:
        reply: msgspec.Struct
        try:
            reply = await handler(msg)
        except (msgspec.ValidationError, msgspec.DecodeError, asyncpg.DataError) as exc:
            reply = BillingCommandFailed(code="invalid_request", message=str(exc))
        except Exception:
            log.exception("billing query failed")
            reply = BillingCommandFailed(code="internal_error", message="billing query failed")
        await msg.respond(encode(reply))

    return answer


class BillingResponder:
    def __init__(
        self, pool: asyncpg.Pool, schema: str, weekly_caps: Mapping[str, int] | None = None, clock: Clock | None = None
    ) -> None:
        self._pool = pool
        self._schema = schema
        self._weekly_caps = weekly_caps or {}
        """Each plan's weekly cap in micro-Flows: the around-the-clock rule's measure of a day."""
        self._clock = clock or SystemClock()
        self._history = msgspec.json.Decoder(BillingHistoryRequest)
        self._costs = msgspec.json.Decoder(CostsRequest)
        self._abuse = msgspec.json.Decoder(AbuseSignalsRequest)
        self.on_history = answering(self._on_history)
        self.on_costs = answering(self._on_costs)
        self.on_abuse_signals = answering(self._on_abuse_signals)

    async def _on_abuse_signals(self, msg: Msg) -> AbuseSignals:
        request = self._abuse.decode(msg.data)
        async with self._pool.acquire() as conn:
            clients, hours, accounts, plans = await abuse.evidence(
                conn, self._schema, self._clock.now(), clients_days=30, hours_days=14
            )
        scored = abuse_rules.score(accounts, clients, hours, plans, self._weekly_caps, request.min_score)
        return AbuseSignals(accounts=scored[: min(max(request.limit, 1), 1000)])

    async def _on_history(self, msg: Msg) -> BillingHistory:
        request = self._history.decode(msg.data)
        rows = await self._pool.fetch(
            f"""SELECT event_id, kind, occurred_at, amount_micros, plan, previous_plan, reference
                FROM {self._schema}.history WHERE account_id = $1
                ORDER BY occurred_at DESC, event_id LIMIT $2""",
            request.account_id,
            min(max(request.limit, 1), 1000),
        )
        balance = await self._pool.fetchval(
            f"SELECT coalesce(sum(amount_micros), 0) FROM {self._schema}.ledger WHERE account_id = $1",
            request.account_id,
        )
        entries = [BillingEntry(**dict(row)) for row in rows]
        return BillingHistory(entries=entries, balance_micros=int(balance))

    async def _on_costs(self, msg: Msg) -> Costs:
        request = self._costs.decode(msg.data)
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
