"""Every ingress instance's directory follows the whole log of account events.

The ingress projection (projection.py) has one durable consumer per partition, shared by all
instances: with two ingresses each event reaches one of them, which writes it to Postgres and to
its own memory. The other instance's directory would never learn of an account or a multiplier
the first one projected, and would refuse that account's usage (400) or price it at an old
multiplier. So each instance also reads every account event itself, with an ephemeral ordered
consumer (in memory, one replica, gone with the instance), from the checkpoint its directory was
loaded at: Directory.apply is idempotent, so the overlap with the load and with the projection is
harmless.
"""

import logging

import asyncpg
import msgspec
import nats.js
from nats.aio.msg import Msg
from nats.js import api

from libs.eventlog import subjects
from proto.v1 import decode_event
from services.ingress.directory import Directory

log = logging.getLogger(__name__)


async def loaded_from(conn: asyncpg.Connection, schema: str, projection: str, partitions: int) -> int:
    """The stream sequence up to which Postgres holds every account event of every partition (0
    while a partition has no checkpoint). Read it BEFORE loading the directory: the load then holds
    at least all of those."""
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, min(last_seq) AS low FROM {schema}.checkpoints WHERE projection = $1", projection
    )
    return int(row["low"]) if row["n"] >= partitions else 0


class DirectoryFollower:
    def __init__(self, js: nats.js.JetStreamContext, stream: str, directory: Directory) -> None:
        self._js, self._stream, self._directory = js, stream, directory
        self.applied = 0

    async def start(self, after_seq: int) -> None:
        """Follow the account events stored after after_seq."""
        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=after_seq + 1,
        )
        await self._js.subscribe(
            f"{subjects.STORED_PREFIX}.*.account.>",
            stream=self._stream,
            config=config,
            ordered_consumer=True,
            cb=self._on_event,
        )
        log.info("directory follows the account events from sequence %d", after_seq + 1)

    async def _on_event(self, msg: Msg) -> None:
        try:
            event = decode_event(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the projection dead-letters it; nothing for the directory
        self._directory.apply(event)
        self.applied += 1
