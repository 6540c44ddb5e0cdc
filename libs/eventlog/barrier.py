"""The sequence barrier, the one way to wait until a projection shows something: read an account's
state from a projection only once the projection has applied a position of the log.

- `applied_through`: a service's own projection has applied every event of the account stored so
  far (read-your-log for command handlers: billing's and refund's), read from its checkpoints.
- `until_applied`: another service's projection has passed the stream sequence of an event just
  published (an admin command answered once quota applies it; the refund desk's PlanChanged→Free
  before it stores RefundSucceeded), read from what that service says it applied (quota:
  `QuotaStatus.applied`).

Its halves are used apart too: quota's reservations of calls whose gateway went quiet wait for
the account's latest stored event (`latest_stored`) to be applied (`applied_by_partition`)."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

import asyncpg
import nats.js
import nats.js.errors
from nats.aio.client import Client

from libs.eventlog import subjects
from libs.rpc import ask
from proto.v1 import QuotaStatusRequest, rpc


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


Applied = Callable[[], Awaitable[Mapping[int, int]]]
"""Reads a projection's last applied stream sequence per partition."""


async def position_of(js: nats.js.JetStreamContext, stream: str, seq: int) -> Position:
    """Where the event stored at `seq` is: its partition comes from its stored subject."""
    stored = await js.get_msg(stream, seq=seq)
    return Position(subjects.partition_of(stored.subject or ""), seq)


async def until_passed(target: Position, applied: Applied, timeout_s: float | None) -> bool:
    """Poll `applied` until its partition's sequence reaches the target; False once `timeout_s`
    passed first (None: wait as long as it takes)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    while True:
        if (await applied()).get(target.partition, 0) >= target.seq:
            return True
        if deadline is not None and loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)


async def until_applied(
    js: nats.js.JetStreamContext, stream: str, seq: int, applied: Applied, timeout_s: float | None
) -> bool:
    """Wait until a projection (another service's: `applied` asks it) has applied the event stored
    at stream sequence `seq` (0: nothing to wait for). False when `timeout_s` passed first."""
    if seq <= 0:
        return True
    return await until_passed(await position_of(js, stream, seq), applied, timeout_s)


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

    async def checkpoint() -> dict[int, int]:
        applied = await pool.fetchval(
            f"SELECT last_seq FROM {schema}.checkpoints WHERE projection = $1 AND partition = $2",
            projection,
            last.partition,
        )
        return {last.partition: applied or 0}

    return last.seq, await until_passed(last, checkpoint, timeout_s)


async def until_quota_applied(
    nc: Client, stream: str, seq: int, account_id: str, *, timeout_s: float, request_timeout_s: float
) -> bool:
    """Wait until quota's projection has applied the event stored at `seq` (an account's new plan,
    balance, Extra Usage: its next call meets them), asking `quota.status` for what quota applied.
    False when `timeout_s` passed first; quota away (`Unavailable`) raises."""
    request = QuotaStatusRequest(account_id=account_id)

    async def applied() -> Mapping[int, int]:
        return (await ask(nc, rpc.QUOTA_STATUS, request, request_timeout_s)).applied

    return await until_applied(nc.jetstream(), stream, seq, applied, timeout_s)
