"""Stores calls' usage in the log before the calls end: group commit.

A call puts its UsageRecorded in the current batch and awaits it; one flusher publishes the
batch (Nats-Msg-Id = the event id) and wakes every caller once JetStream has stored it. Up to
`max_in_flight` batches wait for their acks at once; while they do the next one fills, so
concurrent calls share a round trip and the batch size follows the load. Nothing waits here
that is not a call holding its response back (bounded by `max_pending`), so a gateway killed
outright loses no usage of a call its client saw finish.

While JetStream refuses (or NATS is away), `accepting` is false and the gateway admits no
metered calls; usage of calls that already ran is retried with backoff for `store_timeout_s`
while their clients wait, then given up (UsageNotStored, logged with the whole event).

`durable=False` is the previous design (usage published after the response, lost with the
process), kept only so that `make bench` can measure both side by side.
"""

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable

import msgspec
from opentelemetry import context

from libs.eventlog.publisher import EventPublisher, PublishFailed
from proto.v1 import UsageRecorded

log = logging.getLogger(__name__)
RETRY_AFTER_S = 2
"""What a refused call is told while usage cannot be stored."""


class UsageNotStored(Exception):
    """JetStream did not store the usage within the bound: the call must not end as a success."""


class _Pending(msgspec.Struct):
    event: UsageRecorded
    parent: context.Context
    stored: asyncio.Future[None]
    give_up_at: float


class UsageRecorder:
    def __init__(
        self,
        publisher: EventPublisher,
        *,
        connected: Callable[[], bool] | None = None,
        store_timeout_s: float = 60.0,
        durable: bool = True,
        max_batch: int = 1000,
        max_in_flight: int = 4,
        max_pending: int = 20_000,
    ) -> None:
        self._publisher = publisher
        self._connected = connected
        self._store_timeout_s = store_timeout_s
        self.durable = durable
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(max_pending)
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._failing = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def accepting(self) -> bool:
        """Whether a new metered call may start: its usage could be stored now."""
        return not self._failing and (self._connected is None or self._connected())

    async def store(self, event: UsageRecorded) -> None:
        """Return once JetStream has stored the event (in the queued design: once it is queued).
        Raises UsageNotStored when it could not be stored within the bound."""
        await self._room.acquire()
        stored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stored.add_done_callback(self._freed)
        give_up_at = time.monotonic() + self._store_timeout_s
        self._pending.append(_Pending(event, context.get_current(), stored, give_up_at))
        self._idle.clear()
        self._wake.set()
        if self.durable:
            await asyncio.shield(stored)

    def _freed(self, stored: "asyncio.Future[None]") -> None:
        self._room.release()
        if not stored.cancelled():
            stored.exception()  # retrieved: the queued design awaits no one

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            # A batch goes out as soon as a slot is free; while every slot waits for its ack the
            # next batch grows, so a call waits about one round trip, not the one before it too.
            await self._slots.acquire()
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            if not self._pending:
                self._wake.clear()
            if not batch:
                self._slots.release()
                continue
            task = asyncio.create_task(self._store_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(functools.partial(self._batch_done, batch))

    def _batch_done(self, batch: list[_Pending], task: "asyncio.Task[None]") -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:  # a bug, not JetStream: say so
            log.error("storing a batch of %d usage events failed: %r", len(batch), exc)
            for pending in batch:
                if not pending.stored.done():
                    pending.stored.set_exception(UsageNotStored(repr(exc)))
        self._in_flight.discard(task)
        self._slots.release()
        if not self._pending and not self._in_flight:
            self._idle.set()

    async def _store_batch(self, batch: list[_Pending]) -> None:
        delay = 0.05
        while batch:
            try:
                await self._publisher.publish([p.event for p in batch], [p.parent for p in batch])
            except PublishFailed as exc:
                self._failing = True
                ids = ", ".join(p.event.reservation_id or p.event.event_id for p in batch[:5])
                log.warning("usage of %d calls not stored yet (%s%s): %s; retrying in %.2f s",
                            len(batch), ids, ", ..." if len(batch) > 5 else "", exc, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                batch = self._give_up_expired(batch)
                continue
            self._failing = False
            for pending in batch:
                if not pending.stored.done():
                    pending.stored.set_result(None)
            return
        # Everything of the failed batch was given up: admit again, and let the next call's
        # usage find out whether JetStream stores again (half-open).
        self._failing = False

    def _give_up_expired(self, batch: list[_Pending]) -> list[_Pending]:
        now, kept = time.monotonic(), []
        for pending in batch:
            if now < pending.give_up_at:
                kept.append(pending)
                continue
            event = msgspec.json.encode(pending.event).decode()
            log.error("usage NOT stored after %.0f s; call %s answered with an error; the event, to re-ingest: %s",
                      self._store_timeout_s, pending.event.reservation_id, event)  # fmt: skip
            if not pending.stored.done():
                pending.stored.set_exception(UsageNotStored(f"usage of {pending.event.reservation_id} not stored"))
        return kept

    async def flush(self, timeout_s: float) -> None:
        """Wait (a bounded time) until nothing is waiting to be stored: what the queued design needs
        at shutdown; in the durable one every call already waited for its own."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
