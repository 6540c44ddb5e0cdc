"""cancel_and_wait (libs/cancelling.py) ends a task whose cancellation asyncio.wait_for lost: one
cancelled in the moment the reply it waited on came in, as nats-py waits for each request's."""

import asyncio
import sys

import pytest

from libs.cancelling import cancel_and_wait
from tests.lost_cancel import as_a_reply_comes


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancellation from Python 3.12")
async def test_one_cancel_is_lost_by_a_wait_for_whose_reply_came_in() -> None:
    """Why the helper exists: on this Python the task goes on as if never cancelled."""
    task = await as_a_reply_comes()
    task.cancel()
    await asyncio.wait([task], timeout=0.5)
    assert not task.done()
    task.cancel()  # not at that moment any more: this one ends it
    await asyncio.wait([task], timeout=0.5)
    assert task.cancelled()


async def test_cancel_and_wait_ends_a_task_whose_first_cancellation_was_lost() -> None:
    task = await as_a_reply_comes()
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_cancel_and_wait_returns_for_a_task_ended_already_or_failing_as_it_is_cancelled() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise ValueError("its own clean-up failed") from None

    failing = asyncio.create_task(fails_when_cancelled())
    await asyncio.sleep(0)
    await cancel_and_wait(failing)  # its outcome is the task's, not raised here
    assert isinstance(failing.exception(), ValueError)
    await cancel_and_wait(failing)
