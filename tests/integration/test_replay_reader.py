"""The replay's partition reader stops when it is closed, whatever its read-ahead was waiting for."""

import asyncio

import pytest
from nats.aio.client import Client

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
