"""Follow part of the event log into memory, in every instance of a service (an ephemeral ordered
consumer: in memory, one replica, gone with the instance), from the checkpoint the memory was loaded
at. What it applies must be idempotent: the overlap with the load is applied twice.

Used by keys (services/keys/app.py), whose every instance answers key.lookup from its own memory
while only one of them writes the projection to Postgres, and by ingress, whose every instance
prices usage from its own directory (services/ingress/follower.py)."""

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg
import msgspec
import nats.js
from nats.aio.msg import Msg
from nats.js import api

from libs.eventlog import subjects
from proto.v1 import decode_event
from proto.v1.events import AnyEvent

log = logging.getLogger(__name__)


async def loaded_from(conn: asyncpg.Connection, schema: str, projection: str, partitions: int) -> int:
    """The stream sequence up to which Postgres holds every account event of every partition (0
    while a partition has no checkpoint). Read it BEFORE loading the directory: the load then holds
    at least all of those."""
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, min(last_seq) AS low FROM {schema}.checkpoints WHERE projection = $1", projection
    )
    return int(row["low"]) if row["n"] >= partitions else 0


class LogFollower:
    def __init__(
        self, js: nats.js.JetStreamContext, stream: str, event_types: tuple[str, ...], apply: Callable[[AnyEvent], None]
    ) -> None:
        self._js, self._stream, self._types, self._apply = js, stream, frozenset(event_types), apply
        self._sub: nats.js.JetStreamContext.PushSubscription | None = None
        self.applied_seq = 0

    async def start(self, after_seq: int, category: str = "account") -> None:
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
        self._sub = await self._js.subscribe(
            f"{subjects.STORED_PREFIX}.*.{category}.>", stream=self._stream, config=config,
            ordered_consumer=True, cb=self._on_event,
        )  # fmt: skip

    async def _on_event(self, msg: Msg) -> None:
        if subjects.event_type_of(msg.subject) in self._types:
            try:
                self._apply(decode_event(msg.data))
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass  # the projection dead-letters it
        self.applied_seq = msg.metadata.sequence.stream

    async def synced(self, timeout_s: float = 2.0) -> bool:
        """Return once every event stored before the call is applied here (one JetStream API round
        trip when it is so); False past the timeout."""
        assert self._sub is not None
        deadline = time.monotonic() + timeout_s
        while True:
            info = await self._sub.consumer_info()
            delivered = info.delivered.stream_seq if info.delivered is not None else 0
            if not info.num_pending and self.applied_seq >= (delivered or 0):
                return True
            if time.monotonic() > deadline:
                log.warning("follower: %s events not applied after %.1f s", info.num_pending, timeout_s)
                return False
            await asyncio.sleep(0.005)
