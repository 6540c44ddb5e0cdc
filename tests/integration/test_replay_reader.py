"""The replay's partition reader: it stops when it is closed, whatever its read-ahead was waiting for,
and reads the log without the work nats-py would do on each event."""

import asyncio

import pytest
from nats.aio.client import Client
from nats.js import api

from libs.eventlog import subjects
from libs.replay.reader import PartitionReader

pytestmark = pytest.mark.connected


async def test_a_cancel_that_comes_with_the_answer_is_not_lost(nc: Client) -> None:
    """close() cancels the read-ahead once and waits for it. When the cancel lands in the same turn of
    the loop as the answer it waited for, asyncio.wait_for (Python 3.11) returns the answer and drops
    the cancel: the read-ahead then blocks on its full queue and close() never returns."""
    reader = PartitionReader(nc, "ANY", 0, None, 10)
    waiting = asyncio.create_task(reader._answer())
    await asyncio.sleep(0)  # it waits for the answer
    reader._answered.set()  # the answer comes, and in the same turn of the loop, close()'s cancel
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 5)


async def test_a_rebuild_reads_the_log_without_parsing_its_events_headers(nc: Client) -> None:
    """nats-py parses every message's headers into a dict before handing it over: for a rebuild,
    which reads none of them (the publisher's Nats-Msg-Id), that was 16% of billing's CPU (py-spy,
    docs/performance.md). The log's own answers (404 no more messages) keep theirs: the reader ends a
    batch on them."""
    js = nc.jetstream()
    stream = "REPLAY_HEADERS"
    await js.add_stream(api.StreamConfig(name=stream, subjects=[f"{subjects.STORED_PREFIX}.>"]))
    try:
        for i in range(3):
            await js.publish(f"{subjects.STORED_PREFIX}.0.usage.a{i}.UsageRecorded", str(i).encode(),
                             headers={"Nats-Msg-Id": f"e-{i}"})  # fmt: skip
        reader = PartitionReader(nc, stream, 0, "usage", 10)
        await reader.start(1)
        try:
            fetched = await asyncio.wait_for(reader.next(), 10)  # 3 of 10: ended by the log's "no more"
            assert [int(m.data) for m in fetched.msgs] == [0, 1, 2]
            assert [m.headers for m in fetched.msgs] == [None, None, None]
            assert (await asyncio.wait_for(reader.next(), 10)).msgs == []
        finally:
            await reader.close()
    finally:
        await js.delete_stream(stream)
