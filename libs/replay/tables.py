"""A projection's tables in Postgres: empty copies in a fresh schema, and the atomic swap.

Only the tables a projection lists move; anything else in its schema stays where it is
(ingress.seen_events is ingress's own write-side state, not derived from the log).
The copies carry the live tables' columns, defaults, checks, keys, foreign keys and
indexes under the same names, so that after a swap the next migration finds what it
expects.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

_CONSTRAINTS = """
    SELECT c.relname AS table_name, k.conname AS name, pg_get_constraintdef(k.oid) AS definition
    FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = any($2::text[]) AND k.contype IN ('p', 'u', 'x', 'f')
    ORDER BY k.contype = 'f', c.relname, k.conname"""

_INDEXES = """
    SELECT c.relname AS table_name, pg_get_indexdef(i.indexrelid) AS definition
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = any($2::text[])
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"""


async def clone_tables(conn: asyncpg.Connection, live: str, fresh: str, tables: Sequence[str]) -> None:
    """(Re)create `fresh` holding empty copies of the live tables."""
    async with conn.transaction():
        await conn.execute(f"DROP SCHEMA IF EXISTS {fresh} CASCADE; CREATE SCHEMA {fresh}")
        for table in tables:
            await conn.execute(f"CREATE TABLE {fresh}.{table} (LIKE {live}.{table} INCLUDING ALL EXCLUDING INDEXES)")
        # With the live schema first on the search path, foreign keys print their target unqualified,
        # so that run with the fresh schema first they point at the fresh tables.
        await conn.execute(f"SET LOCAL search_path TO {live}")
        constraints = await conn.fetch(_CONSTRAINTS, live, list(tables))
        await conn.execute(f"SET LOCAL search_path TO {fresh}")
        for row in constraints:
            await conn.execute(
                f"ALTER TABLE {fresh}.{row['table_name']} ADD CONSTRAINT {row['name']} {row['definition']}"
            )
        for row in await conn.fetch(_INDEXES, live, list(tables)):
            on_live, on_fresh = f" ON {live}.{row['table_name']} ", f" ON {fresh}.{row['table_name']} "
            assert on_live in row["definition"], row["definition"]
            await conn.execute(row["definition"].replace(on_live, on_fresh, 1))


async def swap_tables(conn: asyncpg.Connection, live: str, fresh: str, tables: Sequence[str]) -> str:
    """In ONE transaction: the live tables move out, the fresh ones take their place. Readers
    see either the old tables or the new ones, never a mix. Returns the schema that now holds
    the old tables."""
    retired = f"{live}_old_{datetime.now(UTC):%Y%m%d%H%M%S}"
    async with conn.transaction():
        await conn.execute("SET LOCAL lock_timeout = '10s'")
        await conn.execute(f"CREATE SCHEMA {retired}")
        for table in tables:
            await conn.execute(f"ALTER TABLE {live}.{table} SET SCHEMA {retired}")
        for table in tables:
            await conn.execute(f"ALTER TABLE {fresh}.{table} SET SCHEMA {live}")
        await conn.execute(f"DROP SCHEMA {fresh} CASCADE")
    return retired


async def drop_schema(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def checkpoints(conn: asyncpg.Connection, schema: str, projection: str) -> dict[int, int]:
    """The last sequence applied, per partition (partitions never applied to are absent)."""
    rows = await conn.fetch(f"SELECT partition, last_seq FROM {schema}.checkpoints WHERE projection = $1", projection)
    return {row["partition"]: row["last_seq"] for row in rows}


async def carry_fences(conn: asyncpg.Connection, live: str, fresh: str, projection: str) -> None:
    """Give the rebuilt checkpoints the live ones' fences (not derived from the log: the tokens of the
    live writers, libs/eventlog/runner.py), and the rows a live writer stamped before it applied
    anything (last_seq 0), so that the swapped-in tables fence a stale writer out as the old did."""
    await conn.execute(
        f"""INSERT INTO {fresh}.checkpoints (projection, partition, last_seq, fence)
            SELECT projection, partition, last_seq, fence FROM {live}.checkpoints WHERE projection = $1
            ON CONFLICT (projection, partition) DO UPDATE SET fence = EXCLUDED.fence""",
        projection,
    )
