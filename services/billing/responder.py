"""billing's request/reply subjects: history and cost analysis, read from its projection."""

import asyncpg
import msgspec
from nats.aio.msg import Msg

from proto.v1 import BillingEntry, BillingHistory, BillingHistoryRequest, CostLine, Costs, CostsRequest, encode


class BillingResponder:
    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        self._history = msgspec.json.Decoder(BillingHistoryRequest)
        self._costs = msgspec.json.Decoder(CostsRequest)

    async def on_history(self, msg: Msg) -> None:
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
        await msg.respond(encode(BillingHistory(entries=entries, balance_micros=int(balance))))

    async def on_costs(self, msg: Msg) -> None:
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
        await msg.respond(encode(Costs(lines=[CostLine(**dict(row)) for row in rows])))
