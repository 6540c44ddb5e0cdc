"""libs.db.create_pool: connections go back to the pool without asyncpg's reset query (a round
trip per release), and an open transaction is still rolled back."""

import asyncio

from libs.db import create_pool


async def test_a_released_connection_skips_the_reset_query_but_not_the_rollback(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:  # session state left behind: only the reset query would undo it
            await conn.execute("SET application_name = 'left-behind'")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW application_name") == "left-behind"
            await conn.execute("RESET application_name")
        conn = await pool.acquire()
        transaction = conn.transaction()
        await transaction.start()  # released in a transaction, as a cancelled task may leave it
        await conn.execute("CREATE TEMP TABLE t (x int)")
        await pool.release(conn)
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.t')") is None  # rolled back
    finally:
        await asyncio.wait_for(pool.close(), 10)
