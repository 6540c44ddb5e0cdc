"""Publish events to the log: Nats-Msg-Id is the event id, many publishes in flight, bounded.

JetStream acks every stored message on the reply subject of its publish. This publisher
keeps one wildcard inbox subscription for all of them and matches acks to publishes by
the inbox token: the same protocol as nats-py's publish_async, without a future, a
semaphore and a JSON parse into a dataclass per message, which dominate a batch of
thousands on the ingest path. Each ack is matched as nats-py reads it (libs.inbox), not through
a queue and a task of the subscription's own.
"""

import asyncio
import itertools
from collections import Counter
from collections.abc import Sequence

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from opentelemetry.context import Context
from opentelemetry.trace import Tracer

from libs import tracing
from libs.eventlog import metrics, subjects
from libs.inbox import subscribe_handing_over
from libs.outbound import Frames, header_name
from proto.v1 import encode
from proto.v1.events import Event


class PublishFailed(Exception):
    """JetStream did not confirm storing every event; the caller must not report success."""


class PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_ack = msgspec.json.Decoder(PubAck)
_MSG_ID = header_name(api.Header.MSG_ID)
_TRACEPARENT = header_name(tracing.TRACEPARENT)


class _Batch:
    def __init__(self, size: int) -> None:
        self.acks: list[PubAck | None] = [None] * size
        self.missing = size
        self.done = asyncio.get_running_loop().create_future()

    def settle(self, index: int, ack: PubAck) -> None:
        if self.acks[index] is None:
            self.acks[index] = ack
            self.missing -= 1
            if self.missing == 0 and not self.done.done():
                self.done.set_result(None)


class EventPublisher:
    def __init__(
        self, nc: Client, stream: str, timeout_s: float = 5.0, max_in_flight: int = 20_000, tracer: Tracer | None = None
    ) -> None:
        self._nc = nc
        self._tracer = tracer
        self._stream = stream
        self._timeout_s = timeout_s
        self._room = asyncio.Semaphore(max_in_flight // 1000 or 1)  # whole batches of up to 1,000
        self._batches: dict[int, _Batch] = {}
        self._ids = itertools.count()
        self._inbox = ""

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        await subscribe_handing_over(self._nc, f"{self._inbox}.*.*", self._on_ack)

    def _on_ack(self, msg: Msg) -> None:
        _, batch_id, index = msg.subject.rsplit(".", 2)
        batch = self._batches.get(int(batch_id))
        if batch is not None:
            try:
                ack = _ack.decode(msg.data)
            except msgspec.DecodeError:
                ack = PubAck(error={"description": f"unreadable ack {msg.data[:100]!r}"})
            batch.settle(int(index), ack)

    async def publish(self, events: Sequence[Event], parents: Sequence[Context] | None = None) -> list[PubAck]:
        """Return once JetStream has stored every event (or knew it already: ack.duplicate).

        Each event carries the trace context it was caused in: its own from `parents` (events
        queued by many requests), else the current one."""
        if not events:
            return []
        assert self._inbox, "EventPublisher.start() was not called"
        acks: list[PubAck] = []
        for start in range(0, len(events), 1000):
            chunk = slice(start, start + 1000)
            acks += await self._publish_chunk(events[chunk], parents[chunk] if parents is not None else None)
        return acks

    async def _publish_chunk(self, events: Sequence[Event], parents: Sequence[Context] | None) -> list[PubAck]:
        async with self._room:
            batch_id = next(self._ids)
            batch = _Batch(len(events))
            self._batches[batch_id] = batch
            types = [type(event).__name__ for event in events]
            try:
                with tracing.publishing(self._tracer, types, parents) as traceparents:
                    frames = Frames(self._nc)
                    for index, event in enumerate(events):
                        headers = [(_MSG_ID, event.event_id)]
                        if traceparents is not None and (traceparent := traceparents[index]) is not None:
                            headers.append((_TRACEPARENT, traceparent))
                        frames.add(
                            subjects.publish_subject(event.category, event.subject_account, types[index]),
                            f"{self._inbox}.{batch_id}.{index}",
                            encode(event),
                            headers,
                        )
                    await frames.send()
                    await asyncio.wait_for(asyncio.shield(batch.done), self._timeout_s)
            except (TimeoutError, nats.errors.Error) as exc:
                raise PublishFailed(f"event log did not store the batch: {exc!r}") from exc
            finally:
                del self._batches[batch_id]
        acks = [ack for ack in batch.acks if ack is not None]
        refused = [ack.error for ack in acks if ack.error]
        if refused:
            raise PublishFailed(f"event log refused {len(refused)} events: {refused[0]}")
        stored = Counter(type(event).__name__ for event, ack in zip(events, acks, strict=True) if not ack.duplicate)
        for event_type, count in stored.items():
            metrics.events_published.add(count, {"type": event_type})
        return acks
