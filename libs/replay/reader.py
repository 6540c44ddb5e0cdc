"""Reading one partition of the log fast, for a rebuild: an ephemeral consumer that needs no
acks (nothing is redelivered: a failed rebuild is started again from scratch), asked for big
batches by a task that reads the next batch while the last one is being applied.

It sends JetStream's pull requests itself and collects the messages as nats-py parses them
(libs.inbox): nats-py's fetch() waits for each message with a timeout of its own, and even a
subscription callback costs a queue, a task switch and a coroutine per message, several times
more than collecting the message at hundreds of thousands of messages.
"""

import asyncio
import contextlib
import json
import time
import uuid
from typing import NamedTuple

import nats.errors
import nats.js
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from libs import failpoints
from libs.cancelling import cancel_and_wait
from libs.eventlog import subjects
from libs.eventlog.delivery import skip_unread_headers
from libs.inbox import subscribe_handing_over

INACTIVE_THRESHOLD_S = 120.0
"""The server forgets the consumer this long after a replay died without deleting it."""
SILENCE_S = 30.0
IDLE_S = 0.05
"""The pause before asking again when the log held nothing more."""


class Fetched(NamedTuple):
    requested_at: float
    """time.monotonic() when the fetch was asked for: an empty batch proves that nothing
    more was in the log then, not later."""
    msgs: list[Msg]


class PartitionReader:
    def __init__(self, nc: Client, stream: str, partition: int, category: str | None, batch: int) -> None:
        self._nc, self._js, self._stream, self._batch = nc, nc.jetstream(), stream, batch
        self._filter = subjects.partition_filter(partition, category)
        self._name = f"replay-p{partition}-{uuid.uuid4().hex[:12]}"
        self._fetched: asyncio.Queue[Fetched] = asyncio.Queue(maxsize=2)
        self._task: asyncio.Task[None] | None = None
        self._inbox = nc.new_inbox()
        self._sub: Subscription | None = None
        self._received: list[Msg] = []
        self._answered = asyncio.Event()
        self._refused = ""
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
        self._sub = await subscribe_handing_over(self._nc, self._inbox, self._on_msg)
        skip_unread_headers(self._sub)  # a rebuild reads no event's headers; the log's answers keep theirs
        self._task = asyncio.create_task(self._read_ahead(), name=self._name)

    async def next(self) -> Fetched:
        """The next batch (empty when the log held nothing more); raises what stopped the reading."""
        assert self._task is not None, "start() first"
        getter = asyncio.ensure_future(self._fetched.get())
        await asyncio.wait((getter, self._task), return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            self._task.result()
        return getter.result()

    def _on_msg(self, msg: Msg) -> None:
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if status is None:
            self._received.append(msg)
            if len(self._received) < self._batch:
                return
        elif status not in ("404", "408"):  # not "no more messages": the consumer is gone, or worse
            self._refused = f"{status} {(msg.headers or {}).get(api.Header.DESCRIPTION, '')}"
        self._answered.set()

    async def _read_ahead(self) -> None:
        request = json.dumps({"batch": self._batch, "no_wait": True}).encode()
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._name}"
        while True:
            self._answered.clear()
            requested_at = time.monotonic()
            await self._nc.publish(subject, request, reply=self._inbox)
            if failpoints.fires("replay_read_lost"):  # a fault test: the pull request lost with its connection
                raise RuntimeError(f"the log stopped answering a read of {self._filter} (failpoint)")
            await self._answer()
            if self._refused:
                raise RuntimeError(f"the log refused a read of {self._filter}: {self._refused}")
            msgs, self._received = self._received, []
            if msgs:
                self.pending = int(msgs[-1].reply.rsplit(".", 1)[-1])
            else:
                await asyncio.sleep(IDLE_S)
            await self._fetched.put(Fetched(requested_at, msgs))

    async def _answer(self) -> None:
        """Wait for the batch to be complete, or the log to say it holds no more, for as long as
        messages keep coming (a busy event loop takes its time to deliver them)."""
        received = -1
        while received < len(self._received):
            received = len(self._received)
            try:
                async with asyncio.timeout(SILENCE_S):  # not wait_for: on 3.11 it may swallow close()'s cancel
                    await self._answered.wait()
                return
            except TimeoutError:
                continue
        # A replay is cheap to start again; a wrong "nothing more" is not.
        raise RuntimeError(f"the log stopped answering a read of {self._filter}")

    async def close(self) -> None:
        """Stop reading and let the consumer go. Never raises: how the reading ended was next()'s to
        say (a read that failed failed the replay; raising it again here took the service down)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            if not self._task.cancelled():
                self._task.exception()  # retrieved: next() raised it already, or nobody asks any more
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await self._js.delete_consumer(self._stream, self._name)
