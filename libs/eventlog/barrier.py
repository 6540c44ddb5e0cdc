"""A sequence barrier: read an account's state from a projection only once the projection has
applied every event of that account stored so far (read-your-log for command handlers).

Its two halves are used apart too: quota's reservations of calls whose gateway went quiet wait
for the account's latest stored event (`latest_stored`) to be applied (`applied_by_partition`)."""

import asyncio
from typing import NamedTuple

import asyncpg
import nats.js
import nats.js.errors

from libs.eventlog import subjects


class Position(NamedTuple):
    """Where an event is in the log: its partition and its stream sequence."""

    partition: int
    seq: int


async def latest_stored(
    js: nats.js.JetStreamContext, stream: str, account_id: str, category: str = "*"
) -> Position | None:
    """The position of the account's latest event (of `category`) stored now; None when there is none."""
    try:
        last = await js.get_last_msg(stream, f"{subjects.STORED_PREFIX}.*.{category}.{account_id}.*")
    except nats.js.errors.NotFoundError:
        return None
    return Position(subjects.partition_of(last.subject or ""), int(last.seq or 0))


async def applied_by_partition(pool: asyncpg.Pool, schema: str, projection: str) -> dict[int, int]:
    """The last sequence `projection` applied, per partition (from its checkpoints)."""
    rows = await pool.fetch(f"SELECT partition, last_seq FROM {schema}.checkpoints WHERE projection = $1", projection)
    return {row["partition"]: row["last_seq"] for row in rows}


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
    last = await latest_stored(js, stream, account_id, category)
    if last is None:
        return 0, True
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        applied = await pool.fetchval(
            f"SELECT last_seq FROM {schema}.checkpoints WHERE projection = $1 AND partition = $2",
            projection,
            last.partition,
        )
        if (applied or 0) >= last.seq:
            return last.seq, True
        if deadline is not None and loop.time() > deadline:
            return last.seq, False
        await asyncio.sleep(0.01)
