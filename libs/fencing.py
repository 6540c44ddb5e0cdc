"""Fencing a leader's own Postgres writes, those it makes outside its projection (the refund desk's
refund requests, payout starts and settlements), by the revision of its leader lease: the same
token as its projection's (libs/eventlog/runner.py, "Fencing"; docs/scaling.md).

A new leader stamps its token on the row `<schema>.fences[holder]` before it decides anything;
each deciding transaction of a leader first takes that row FOR SHARE and goes on only if the token
there is not newer than its own. The share lock is held to the commit, so a stamp waits for a
transaction that checked before it (which then comes first in every reader's eyes, its events
included), and any transaction that starts after the stamp fails: a leader frozen past its lease
decides nothing once the next one leads. What a frozen leader holds is one short transaction: the
new leader's stamp waits for it to end (a killed process's ends at once)."""

import asyncpg


class Fenced(Exception):
    """A newer owner (of a partition, or the lead) stamped its token: this writer is stale, and what
    it was about to commit was not committed."""


class LeaderFence:
    def __init__(self, schema: str, holder: str) -> None:
        self._schema, self._holder = schema, holder
        self.token: int | None = None
        """This leader's token, once stamped; None before (no deciding transaction goes through)."""

    async def stamp(self, pool: asyncpg.Pool, token: int) -> None:
        """Lead with this token from now on; Fenced if a newer leader stamped its own already."""
        stamped = await pool.fetchval(
            f"""INSERT INTO {self._schema}.fences AS f (holder, fence) VALUES ($1, $2)
                ON CONFLICT (holder) DO UPDATE SET fence = EXCLUDED.fence WHERE f.fence <= EXCLUDED.fence
                RETURNING true""",
            self._holder,
            token,
        )
        if stamped is None:
            raise Fenced(f"{self._holder}: a newer leader than fence {token} leads")
        self.token = token

    async def check(self, conn: asyncpg.Connection) -> None:
        """First in a deciding transaction: raise Fenced unless this leader's token is the newest."""
        stored = await conn.fetchval(
            f"SELECT fence FROM {self._schema}.fences WHERE holder = $1 FOR SHARE", self._holder
        )
        if self.token is None or stored is None or stored > self.token:
            raise Fenced(f"{self._holder}: fence {self.token} is not the newest ({stored})")
