"""A projection's checkpoint rows (`<schema>.checkpoints`: per projection and partition, the last
stream sequence applied, and the fencing token of its writer): written in each batch's
transaction by the runner (libs/eventlog/runner.py), a replay's rebuild and the component tests.

Fencing (docs/scaling.md): a runner given a `fence` projects each partition under a lease whose
revision (a NATS KV revision: it only grows, and a new owner's is higher than any of the previous
owner's) is the writer's fencing token. Taking a partition, the runner stamps that token on the
partition's checkpoint row before it reads the checkpoint; each commit writes the checkpoint only
if the token there is not newer than its own (in the same statement: no extra round trip), and no
event is dead-lettered by a writer whose token is not the newest. A writer frozen past its lease
(a GC pause, SIGSTOP, a starved VM) that wakes up to commit one more batch after a new owner
stamped its token finds it there: the transaction rolls back, nothing of the batch is applied,
and the runner stops that partition (`Fenced`): it never retries it. The row is locked at the end
of a commit, not at its start: a writer frozen inside a transaction must not hold the new owner's
stamp up.
"""

from typing import Protocol

import asyncpg

from libs.fencing import Fenced


class Checkpointed(Protocol):
    """What names a projection's checkpoint rows (every Projection is one)."""

    name: str
    schema: str


async def save_checkpoint(
    conn: asyncpg.Connection, projection: Checkpointed, partition: int, last_seq: int, fence: int | None = None
) -> None:
    """The new checkpoint. With a fence, only while the row holds no newer one (else Fenced: the
    caller's transaction rolls back); the row stays locked to the commit, so a new owner's
    stamp_fence waits for this commit and finds it, or comes first and makes it fail."""
    if fence is None:
        await conn.execute(
            f"""INSERT INTO {projection.schema}.checkpoints (projection, partition, last_seq) VALUES ($1, $2, $3)
                ON CONFLICT (projection, partition) DO UPDATE SET last_seq = EXCLUDED.last_seq""",
            projection.name,
            partition,
            last_seq,
        )
        return
    saved = await conn.fetchval(
        f"""INSERT INTO {projection.schema}.checkpoints AS c (projection, partition, last_seq, fence)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (projection, partition) DO UPDATE SET last_seq = EXCLUDED.last_seq, fence = EXCLUDED.fence
            WHERE c.fence <= EXCLUDED.fence
            RETURNING true""",
        projection.name,
        partition,
        last_seq,
        fence,
    )
    if saved is None:
        raise Fenced(f"{projection.name} p{partition}: a newer writer than fence {fence} took the partition")


async def stamp_fence(conn: asyncpg.Connection, projection: Checkpointed, partition: int, fence: int) -> int:
    """Put this writer's fencing token on the partition's checkpoint row (created at 0 if missing) and
    return the checkpoint; raise Fenced if a newer token is there already."""
    last_seq = await conn.fetchval(
        f"""INSERT INTO {projection.schema}.checkpoints AS c (projection, partition, last_seq, fence)
            VALUES ($1, $2, 0, $3)
            ON CONFLICT (projection, partition) DO UPDATE SET fence = EXCLUDED.fence WHERE c.fence <= EXCLUDED.fence
            RETURNING last_seq""",
        projection.name,
        partition,
        fence,
    )
    if last_seq is None:
        raise Fenced(f"{projection.name} p{partition}: a newer writer than fence {fence} took the partition")
    return int(last_seq)


async def check_fence(
    conn: asyncpg.Connection, projection: Checkpointed, partition: int, fence: int, *, lock: bool = False
) -> None:
    """Raise Fenced if a newer writer's token is on the partition's checkpoint row: before an event is
    dead-lettered (a stale writer's failure may come from the new owner's rows), and around a
    reapply; lock=True: keep the row locked to the commit."""
    stored = await conn.fetchval(
        f"""SELECT fence FROM {projection.schema}.checkpoints WHERE projection = $1 AND partition = $2
            {"FOR UPDATE" if lock else ""}""",
        projection.name,
        partition,
    )
    if stored is not None and stored > fence:
        raise Fenced(f"{projection.name} p{partition}: fence {fence} is stale (the checkpoint holds {stored})")
