"""The abuse signals' evidence, kept by billing's projection from the usage it counts once: which
client (the gateway's keyed address hash) and user agent called for which account and key, when
first and last and how often; and each account's subscription use per hour. The projection writes
it in the same statement as the costs (projection.py `_count_usage`): sums, minima and maxima only,
so the rows do not depend on the order or the batches the events come in.

billing keeps it rather than a service of its own: billing already reads every usage event of
every partition once (for the costs) and answers the operator's reads from Postgres; a new
consumer would read the whole usage stream a second time on the same machine for the same rows.
What the evidence means is decided at read time by the pure rules in abuse_rules.py.
"""

from collections import defaultdict
from datetime import datetime, timedelta

import asyncpg

from services.billing.abuse_rules import ClientUse, HourUse


def hour_of(when: datetime) -> datetime:
    """The hour abuse_hours counts a call in: its event time cut to the hour, in the time zone it
    came with (the log's events are in UTC)."""
    return when.replace(minute=0, second=0, microsecond=0)


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
