"""The abuse signals' evidence, kept by billing's projection from the usage it counts once: which
client (the gateway's keyed address hash) and user agent called for which account and key, when
first and last and how often; and each account's subscription use per hour.

billing keeps it rather than a service of its own: billing already reads every usage event of
every partition once (for the costs) and answers the operator's reads from Postgres; a new
consumer would read the whole usage stream a second time on the same machine for the same rows.
What the evidence means is decided at read time by the pure rules in abuse_rules.py.
"""

from collections import defaultdict
from datetime import datetime, timedelta

import asyncpg

from proto.v1 import UsageRecorded
from services.billing.abuse_rules import ClientUse, HourUse


def _hour(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


async def count(conn: asyncpg.Connection, schema: str, usage: list[UsageRecorded]) -> None:
    """Add each event (counted for the first time) to the evidence. Sums, minima and maxima only:
    the rows do not depend on the order or the batches the events come in."""
    clients: dict[tuple[str, str, str, str], tuple[datetime, datetime, int]] = {}
    hours: dict[tuple[str, datetime], list[int]] = defaultdict(lambda: [0, 0])
    for event in usage:
        if event.client_hash:
            key = (event.account_id, event.key_id or "", event.client_hash, event.agent_hash or "")
            at = event.occurred_at
            first, last, calls = clients.get(key, (at, at, 0))
            clients[key] = (min(first, at), max(last, at), calls + 1)
        if event.billing_mode == "subscription":
            line = hours[(event.account_id, _hour(event.occurred_at))]
            line[0] += 1
            line[1] += event.flows_micros
    if clients:
        await conn.execute(
            f"""INSERT INTO {schema}.abuse_clients AS c (account_id, key_id, client_hash, agent_hash, first_seen,
                                                          last_seen, calls)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
                                     $6::timestamptz[], $7::bigint[])
                ON CONFLICT (account_id, key_id, client_hash, agent_hash) DO UPDATE SET
                    first_seen = least(c.first_seen, EXCLUDED.first_seen),
                    last_seen = greatest(c.last_seen, EXCLUDED.last_seen), calls = c.calls + EXCLUDED.calls""",
            *zip(*[(*key, *seen) for key, seen in clients.items()], strict=True),
        )
    if hours:
        await conn.execute(
            f"""INSERT INTO {schema}.abuse_hours AS h (account_id, hour, calls, flows_micros)
                SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::bigint[])
                ON CONFLICT (account_id, hour) DO UPDATE SET calls = h.calls + EXCLUDED.calls,
                    flows_micros = h.flows_micros + EXCLUDED.flows_micros""",
            [k[0] for k in hours], [k[1] for k in hours], [v[0] for v in hours.values()],
            [v[1] for v in hours.values()],
        )  # fmt: skip


async def evidence(
    conn: asyncpg.Connection, schema: str, now: datetime, clients_days: int, hours_days: int
) -> tuple[list[ClientUse], list[HourUse], list[str], dict[str, list[tuple[datetime, str, datetime | None]]]]:
    """What the rules read: recent client use, recent hourly use, every account, and the accounts'
    plan changes (to know each day's caps)."""
    clients = [
        ClientUse(**dict(row))
        for row in await conn.fetch(
            f"""SELECT account_id, key_id, client_hash, agent_hash, first_seen, last_seen, calls
                FROM {schema}.abuse_clients WHERE last_seen >= $1""",
            now - timedelta(days=clients_days),
        )
    ]
    hours = [
        HourUse(**dict(row))
        for row in await conn.fetch(
            f"SELECT account_id, hour, calls, flows_micros FROM {schema}.abuse_hours WHERE hour >= $1",
            now - timedelta(days=hours_days),
        )
    ]
    accounts = [row["account_id"] for row in await conn.fetch(f"SELECT account_id FROM {schema}.accounts")]
    plans: dict[str, list[tuple[datetime, str, datetime | None]]] = defaultdict(list)
    for row in await conn.fetch(
        f"SELECT account_id, effective_at, plan, paid_until FROM {schema}.subscriptions WHERE NOT withdrawn"
    ):
        plans[row["account_id"]].append((row["effective_at"], row["plan"], row["paid_until"]))
    return clients, hours, accounts, plans
