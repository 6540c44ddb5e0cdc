"""The account API's change limit: `per_minute` changes at once, then one every 60/per_minute s,
per account, so that one account cannot flood the log or keep the keys service busy for everyone
else. Counted in Postgres, not in the process: every ingress instance behind the load balancer
spends from the same budget (one statement per change; changes are rare, reads are not limited).

GCRA, as quota's RPM: the row holds the account's theoretical arrival time (tat); a change is
allowed when max(tat, now) is at most (per_minute - 1) intervals ahead of now, and moves the tat
one interval on. That is the token bucket the limit was before, with a burst of per_minute."""

import math
from datetime import datetime, timedelta

import asyncpg

from services.ingress.access import RateLimited


class ChangeLimiter:
    def __init__(self, pool: asyncpg.Pool, per_minute: int, schema: str = "ingress") -> None:
        self.per_minute = per_minute
        self._pool, self._schema = pool, schema
        self._interval = timedelta(seconds=60 / per_minute)
        self._ahead = self._interval * (per_minute - 1)
        """How far ahead of now the tat may be before a change: the burst's other changes."""

    async def take(self, account_id: str, now: datetime) -> None:
        """Spend one change of the account's, or raise RateLimited (nothing spent)."""
        async with self._pool.acquire() as conn:
            allowed = await conn.fetchval(
                f"""INSERT INTO {self._schema}.change_limits AS l (account_id, tat) VALUES ($1, $2::timestamptz + $3)
                    ON CONFLICT (account_id) DO UPDATE SET tat = GREATEST(l.tat, $2) + $3
                    WHERE GREATEST(l.tat, $2) <= $2::timestamptz + $4
                    RETURNING true""",
                account_id, now, self._interval, self._ahead,
            )  # fmt: skip
            if allowed:
                return
            tat = await conn.fetchval(f"SELECT tat FROM {self._schema}.change_limits WHERE account_id = $1", account_id)
        wait = (max(tat, now) - now - self._ahead).total_seconds()
        raise RateLimited(max(1, math.ceil(wait)), self.per_minute)
