"""A sequence barrier: read an account's state from a projection only once the projection has
applied every event of that account stored so far (read-your-log for command handlers)."""

import asyncio

import asyncpg
import nats.js
import nats.js.errors

from libs.eventlog import subjects


async def applied_through(
    js: nats.js.JetStreamContext,
    pool: asyncpg.Pool,
    *,
    stream: str,
    projection: str,
    schema: str,
    account_id: str,
    category: str = "*",
    timeout_s: float | None = None,
) -> tuple[int, bool]:
    """Wait until `projection` has applied the account's latest event (of `category`) stored now.
    Return that event's stream sequence (0 when there is none) and whether it was reached before
    `timeout_s` passed (None: wait as long as it takes)."""
    try:
        last = await js.get_last_msg(stream, f"{subjects.STORED_PREFIX}.*.{category}.{account_id}.*")
    except nats.js.errors.NotFoundError:
        return 0, True
    seq, partition = int(last.seq or 0), subjects.partition_of(last.subject or "")
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        applied = await pool.fetchval(
            f"SELECT last_seq FROM {schema}.checkpoints WHERE projection = $1 AND partition = $2", projection, partition
        )
        if (applied or 0) >= seq:
            return seq, True
        if deadline is not None and loop.time() > deadline:
            return seq, False
        await asyncio.sleep(0.01)
