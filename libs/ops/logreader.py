"""Reading a stream from the outside (the event log or the dead letters) for the ops commands.

Each read is a short-lived ephemeral consumer that acknowledges nothing, never a projection's
durable consumer, and selects by subject on the server: a stored event's subject
`flowplan.p.<partition>.<category>.<account>.<Type>` names its account and type, so a filter
by either costs the server an index walk, not the client a read of everything. Stream time
grows with the sequence, so a time bound is turned into a sequence bound once, up front.
"""

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import nats.errors
import nats.js
from nats.js import api

from libs.ops import OpsError

FETCH = 500
IDLE_CLEANUP_S = 30.0
"""The server drops a reader's consumer this long after the reader went away without deleting it."""


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _position(reply: str) -> tuple[int, datetime, int]:
    """(stream sequence, stream time, messages still pending) from the message's ack subject.
    Parsed here rather than by nats-py's metadata, which costs a good share of an export's CPU
    and goes through a float that can round the time up past the stored nanosecond (a --since
    of an exported time would then miss the very message it was copied from)."""
    tokens = reply.split(".")  # $JS.ACK[.<domain>.<hash>].<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
    offset = 0 if len(tokens) == 9 else 2
    nanos = int(tokens[7 + offset])
    return int(tokens[5 + offset]), EPOCH + timedelta(microseconds=nanos // 1000), int(tokens[8 + offset])


class Stored(NamedTuple):
    seq: int
    subject: str
    stored_at: datetime
    """Stream time: when JetStream stored it."""
    data: bytes
    headers: dict[str, str]


def _config(subjects: Sequence[str], **position: object) -> api.ConsumerConfig:
    unique = sorted(set(subjects))
    return api.ConsumerConfig(
        name=f"ops-{uuid.uuid4().hex[:12]}",
        ack_policy=api.AckPolicy.NONE,
        filter_subject=unique[0] if len(unique) == 1 else None,
        filter_subjects=unique if len(unique) > 1 else None,
        inactive_threshold=IDLE_CLEANUP_S,
        mem_storage=True,
        **position,  # type: ignore[arg-type]
    )


class _Consumer:
    """One ephemeral consumer, deleted on exit."""

    def __init__(self, js: nats.js.JetStreamContext, stream: str, config: api.ConsumerConfig) -> None:
        self.js, self.stream, self.config = js, stream, config

    async def __aenter__(self) -> tuple[api.ConsumerInfo, nats.js.JetStreamContext.PullSubscription]:
        try:
            self.info = await self.js.add_consumer(self.stream, self.config)
        except nats.js.errors.NotFoundError as exc:
            raise OpsError(f"stream {self.stream} does not exist: run `flowplan setup` first") from exc
        self.sub = await self.js.pull_subscribe_bind(self.info.name, stream=self.stream)
        return self.info, self.sub

    async def __aexit__(self, *_: object) -> None:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self.sub.unsubscribe()
            await self.js.delete_consumer(self.stream, self.info.name)


async def pending_from(js: nats.js.JetStreamContext, stream: str, subjects: Sequence[str], seq: int) -> int:
    """How many messages on these subjects are stored at or after this sequence (counted by the server)."""
    config = _config(subjects, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=seq)
    async with _Consumer(js, stream, config) as (info, _):
        return int(info.num_pending or 0)


async def seq_at(js: nats.js.JetStreamContext, stream: str, when: datetime) -> int | None:
    """The first sequence stored at or after this stream time; None when nothing is (yet)."""
    config = _config([">"], deliver_policy=api.DeliverPolicy.BY_START_TIME, opt_start_time=when)
    async with _Consumer(js, stream, config) as (info, sub):
        if not info.num_pending:
            return None
        msgs = await sub.fetch(1, timeout=5)
        return int(msgs[0].metadata.sequence.stream)


async def last_seq(js: nats.js.JetStreamContext, stream: str) -> int:
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError as exc:
        raise OpsError(f"stream {stream} does not exist: run `flowplan setup` first") from exc
    return int(info.state.last_seq)


async def start_of_last(
    js: nats.js.JetStreamContext, stream: str, subjects: Sequence[str], n: int, first: int, last: int
) -> int:
    """The sequence from which the last n matching messages in [first, last] start, found by
    bisecting on the server's pending counts (about 2·log2(last-first) small requests) instead
    of reading every match."""
    after = await pending_from(js, stream, subjects, last + 1)
    low, high = first, last + 1  # invariant: count(low) >= n or low == first; count(high) < n

    async def count(seq: int) -> int:
        return await pending_from(js, stream, subjects, seq) - after

    if await count(first) <= n:
        return first
    while high - low > 1:
        middle = (low + high) // 2
        if await count(middle) >= n:
            low = middle
        else:
            high = middle
    return low


async def read(
    js: nats.js.JetStreamContext,
    stream: str,
    subjects: Sequence[str],
    *,
    first: int = 1,
    last: int | None = None,
    follow: bool = False,
) -> AsyncIterator[Stored]:
    """Matching messages from `first` on, in order, up to `last`; without `follow`, up to the
    end of the stream as it is when the read starts; with it, on and on as new ones arrive."""
    end = last
    if not follow:
        stored = await last_seq(js, stream)
        end = stored if last is None else min(last, stored)
    if end is not None and end < first:
        return
    config = _config(subjects, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first)
    async with _Consumer(js, stream, config) as (info, sub):
        if not follow and not info.num_pending:
            return
        while True:
            try:
                msgs = await sub.fetch(FETCH, timeout=1.0)
            except TimeoutError:
                if not follow and not (await sub.consumer_info()).num_pending:
                    return  # what was pending went away meanwhile (a dead letter retried)
                continue
            for msg in msgs:
                seq, stored_at, pending = _position(msg.reply)
                if end is not None and seq > end:
                    return
                yield Stored(seq, msg.subject, stored_at, msg.data, dict(msg.headers or {}))
                if not follow and (seq == end or pending == 0):
                    return
