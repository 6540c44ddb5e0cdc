"""Reading one partition of the log fast, for a rebuild: an ephemeral consumer that needs no
acks (nothing is redelivered: a failed rebuild is started again from scratch), fetched in
big batches by a task that reads the next batch while the last one is being applied."""

import asyncio
import contextlib
import logging
import time
import uuid
from typing import NamedTuple

import nats.errors
import nats.js
from nats.aio.msg import Msg
from nats.js import api

from libs.eventlog import subjects

log = logging.getLogger(__name__)
INACTIVE_THRESHOLD_S = 120.0
"""The server forgets the consumer this long after a replay died without deleting it."""


class Fetched(NamedTuple):
    requested_at: float
    """time.monotonic() when the fetch was asked for: an empty batch proves that nothing
    more was in the log then, not later."""
    msgs: list[Msg]


class PartitionReader:
    def __init__(
        self, js: nats.js.JetStreamContext, stream: str, partition: int, category: str | None, batch: int
    ) -> None:
        self._js, self._stream, self._batch = js, stream, batch
        self._filter = subjects.partition_filter(partition, category)
        self._name = f"replay-p{partition}-{uuid.uuid4().hex[:12]}"
        self._fetched: asyncio.Queue[Fetched] = asyncio.Queue(maxsize=2)
        self._task: asyncio.Task[None] | None = None
        self.pending = 0
        """Messages the log holds beyond those fetched so far."""

    async def start(self, from_seq: int) -> None:
        config = api.ConsumerConfig(
            name=self._name,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=max(1, from_seq),
            ack_policy=api.AckPolicy.NONE,
            filter_subject=self._filter,
            inactive_threshold=INACTIVE_THRESHOLD_S,
            mem_storage=True,
        )
        info = await self._js.add_consumer(self._stream, config=config)
        self.pending = info.num_pending or 0
        sub = await self._js.pull_subscribe_bind(consumer=self._name, stream=self._stream)
        self._task = asyncio.create_task(self._read_ahead(sub), name=self._name)

    async def next(self) -> Fetched:
        """The next batch (empty when the log held nothing more); raises what stopped the reading."""
        assert self._task is not None, "start() first"
        getter = asyncio.ensure_future(self._fetched.get())
        await asyncio.wait((getter, self._task), return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            self._task.result()
        return getter.result()

    async def _read_ahead(self, sub: nats.js.JetStreamContext.PullSubscription) -> None:
        try:
            while True:
                requested_at = time.monotonic()
                try:
                    msgs = await sub.fetch(self._batch, timeout=0.5)
                except TimeoutError:
                    msgs = []
                except nats.errors.Error as exc:  # NATS away for a moment: ask again, claim nothing
                    log.warning("replay read of %s failed (%r); retrying", self._filter, exc)
                    await asyncio.sleep(0.5)
                    continue
                if msgs:
                    self.pending = msgs[-1].metadata.num_pending
                await self._fetched.put(Fetched(requested_at, msgs))
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await self._js.delete_consumer(self._stream, self._name)
