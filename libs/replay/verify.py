"""Is a rebuilt projection the same as the live one? Table by table: row counts and a checksum,
and for a table that differs, the first primary keys whose rows differ.

The checksum is the sum of a 64-bit hash of each row's text: it needs no sort and no
memory beyond one row, so a table of millions of rows is checked in one sequential scan.
Both sides are read in one transaction, so when it is a REPEATABLE READ one they are
compared as of one moment while live writes go on.
"""

from collections.abc import Sequence

import asyncpg

from proto.v1 import TableDifference

FIRST_KEYS = 5


async def compare(conn: asyncpg.Connection, live: str, rebuilt: str, tables: Sequence[str]) -> list[TableDifference]:
    differences = []
    for table in tables:
        live_rows, live_sum = await _checksum(conn, live, table)
        rebuilt_rows, rebuilt_sum = await _checksum(conn, rebuilt, table)
        if (live_rows, live_sum) != (rebuilt_rows, rebuilt_sum):
            keys = await _first_differing_keys(conn, live, rebuilt, table)
            differences.append(
                TableDifference(table=table, live_rows=live_rows, rebuilt_rows=rebuilt_rows, first_keys=keys)
            )
    return differences


async def _checksum(conn: asyncpg.Connection, schema: str, table: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, coalesce(sum(hashtextextended(t::text, 0)), 0) AS h FROM {schema}.{table} AS t"
    )
    assert row is not None
    return int(row["n"]), int(row["h"])


async def _first_differing_keys(conn: asyncpg.Connection, live: str, rebuilt: str, table: str) -> list[str]:
    columns = await conn.fetchval(
        """SELECT array_agg(a.attname ORDER BY k.ord)
           FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
           WHERE i.indrelid = $1::regclass AND i.indisprimary""",
        f"{live}.{table}",
    )
    assert columns, f"{live}.{table} has no primary key to tell rows apart"
    keys = ", ".join(columns)
    rows = await conn.fetch(
        f"""SELECT {keys}, l.h IS NULL AS only_rebuilt, r.h IS NULL AS only_live
            FROM (SELECT {keys}, hashtextextended(t::text, 0) AS h FROM {live}.{table} AS t) AS l
            FULL JOIN (SELECT {keys}, hashtextextended(t::text, 0) AS h FROM {rebuilt}.{table} AS t) AS r
            USING ({keys})
            WHERE l.h IS DISTINCT FROM r.h ORDER BY {keys} LIMIT {FIRST_KEYS}"""
    )
    described = []
    for row in rows:
        how = "only in live" if row["only_live"] else "only in rebuilt" if row["only_rebuilt"] else "differs"
        described.append(", ".join(f"{column}={row[column]}" for column in columns) + f" ({how})")
    return described
