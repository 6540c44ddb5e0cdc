"""Records calls' usage in the log without holding up the responses: events are queued,
published in batches, and retried until JetStream has stored them. On shutdown the queue
is flushed. (A gateway killed outright loses what is still queued; its reservations then
time out in quota.)"""

import asyncio
import contextlib
import logging

from opentelemetry import context

from libs.eventlog.publisher import EventPublisher, PublishFailed
from proto.v1 import UsageRecorded

log = logging.getLogger(__name__)


class UsageRecorder:
    def __init__(self, publisher: EventPublisher, max_batch: int = 500, linger_s: float = 0.005) -> None:
        self._publisher = publisher
        self._linger_s = linger_s
        self._queue: asyncio.Queue[tuple[UsageRecorded, context.Context]] = asyncio.Queue()
        self._max_batch = max_batch
        self._idle = asyncio.Event()
        self._idle.set()

    def record(self, event: UsageRecorded) -> None:
        """Queue the event with the call's trace context: it is published later, in another task."""
        self._idle.clear()
        self._queue.put_nowait((event, context.get_current()))

    async def run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._queue.empty():
                await asyncio.sleep(self._linger_s)  # a few more calls' usage in the same publish
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            delay = 0.05
            while True:
                try:
                    await self._publisher.publish([event for event, _ in batch], [parent for _, parent in batch])
                    break
                except PublishFailed as exc:
                    log.warning("usage not stored yet (%d events): %s; retrying", len(batch), exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
            if self._queue.empty():
                self._idle.set()

    async def flush(self, timeout_s: float = 10.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
