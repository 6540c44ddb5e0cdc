"""Reading a pull consumer's deliveries: where each message stands (its stream and consumer
sequences, from its ack subject), whether one was lost on the way, and the two ways the runner
reads them faster than the pinned nats-py 2.16 would (a queued message taken without a wait, an
event's headers left unparsed). The runner (libs/eventlog/runner.py) and the replay read through
these; tests/integration/test_runner_fetch.py checks them against the real server.
"""

import weakref
from collections.abc import Sequence

import nats.js
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.eventlog.idle import next_message


def sequences(msg: Msg) -> tuple[int, int]:
    """The message's stream sequence and its delivery sequence in its consumer (1, 2, ... with no gap
    unless a delivery was lost), read from its ack subject without building full metadata (which
    parses timestamps too; this runs once for every message on the hot path)."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
        return int(tokens[5]), int(tokens[6])
    if len(tokens) >= 12:  # $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>...
        return int(tokens[7]), int(tokens[8])
    sequence = msg.metadata.sequence
    return int(sequence.stream), int(sequence.consumer)


def stream_seq(msg: Msg) -> int:
    """The message's stream sequence."""
    return sequences(msg)[0]


def next_delivery(consumer_seqs: Sequence[int], expected: int) -> int | None:
    """The consumer sequence to expect after messages of these consumer sequences, or None if one
    before them never arrived (redeliveries of earlier ones, at or below what came already, are no gap)."""
    for seq in consumer_seqs:
        if seq > expected:
            return None
        expected = max(expected, seq + 1)
    return expected


def take_queued_first(sub: nats.js.JetStreamContext.PullSubscription) -> None:
    """Make the pull subscription's fetch take a message already queued without waiting for it.

    nats-py's fetch awaits each message of a batch with `Subscription.next_msg`, which starts two
    tasks (and draws a uuid) per message even when the message is already in the subscription's
    queue: a profile of the runner shows this as the largest part of a projection's CPU per event,
    ahead of its own apply. A queued message is taken here as next_msg would take it (the same
    queue, pending size and task_done); an empty queue waits as next_msg would, but without its
    garbage (libs/eventlog/idle.py), so timeouts, status messages and closed connections behave as
    before. nats-py 2.16 (pinned)."""
    inner = sub._sub

    async def next_msg(timeout: float | None = 1.0) -> Msg:  # noqa: ASYNC109 (next_msg's own signature)
        queue = inner._pending_queue
        if queue.empty() or inner._conn.is_closed:
            return await next_message(inner, timeout)
        msg: Msg = queue.get_nowait()
        inner._pending_size -= len(msg.data)
        queue.task_done()
        return msg

    inner.next_msg = next_msg  # type: ignore[method-assign]


_PLAIN_HEADERS = b"NATS/1.0\r\n"
"""How a message's headers begin when they carry no status (a status has a code after a space:
`NATS/1.0 404 No Messages`, `NATS/1.0 100 Idle Heartbeat`), that is on an event of the log."""
_unread: weakref.WeakKeyDictionary[Client, dict[int, bytes | None]] = weakref.WeakKeyDictionary()
"""Per connection, the subscriptions (by sid) whose events' headers are not parsed, each with the
one header whose presence still has them parsed (None: none)."""


def skip_unread_headers(
    sub: nats.js.JetStreamContext.PullSubscription | Subscription, unless: bytes | None = None
) -> None:
    """Have the connection deliver the subscription's events without parsing their headers, unless
    the raw headers contain `unless` (the runner's tracing reads the traceparent; nothing reads the
    rest, the publisher's Nats-Msg-Id above all). For the runner's pull subscription and for the
    plain one a rebuild's reader (libs/replay/reader.py) collects its batches on.

    nats-py parses every message's headers into a dict in Python before it queues the message: in a
    profile of a projection process that is 6-13% of its CPU, for headers nobody reads. Status
    messages (the end of a fetch, heartbeats) are parsed as before, so fetch sees them. A dead letter
    is built from the event's data and subject, not its headers. nats-py 2.16 (pinned)."""
    inner = sub if isinstance(sub, Subscription) else sub._sub
    conn = inner._conn
    unread = _unread.get(conn)
    if unread is None:
        unread = _unread[conn] = {}
        process = conn._process_msg

        async def process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            if sid in unread and headers and headers.startswith(_PLAIN_HEADERS):
                keep = unread[sid]
                if keep is None or keep not in headers:
                    headers = b""
            await process(sid, subject, reply, data, headers)

        conn._process_msg = process_msg
    for sid in [s for s in unread if s not in conn._subs]:  # sids are never reused: forget the gone ones
        del unread[sid]
    unread[inner._id] = unless
