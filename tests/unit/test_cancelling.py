"""cancel_and_wait (libs/cancelling.py) ends a task whose cancellation asyncio.wait_for lost: one
cancelled in the moment the reply it waited on came in, as nats-py waits for each request's."""

import asyncio
import sys

import pytest

from libs.cancelling import cancel_and_wait


async def _requests(replies: list["asyncio.Future[None]"]) -> None:
    while True:  # as a lease's renewals: one request after the other, each reply awaited with wait_for
        reply = asyncio.get_running_loop().create_future()
        replies.append(reply)
        await asyncio.wait_for(reply, 5)


async def _cancellable_as_a_reply_comes() -> "asyncio.Task[None]":
    """A loop of requests whose reply has come in (wait_for's waiter released) and that has not
    resumed yet: a cancel() now reaches wait_for after its future is done."""
    replies: list[asyncio.Future[None]] = []
    task = asyncio.create_task(_requests(replies))
    await asyncio.sleep(0)  # it waits for its first reply
    replies[-1].set_result(None)
    await asyncio.sleep(0)  # wait_for's waiter released; the task resumes after this task's next step
    return task


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for keeps the cancellation from Python 3.12")
async def test_one_cancel_is_lost_by_a_wait_for_whose_reply_came_in() -> None:
    """Why the helper exists: on this Python the task goes on as if never cancelled."""
    task = await _cancellable_as_a_reply_comes()
    task.cancel()
    await asyncio.wait([task], timeout=0.5)
    assert not task.done()
    task.cancel()  # not at that moment any more: this one ends it
    await asyncio.wait([task], timeout=0.5)
    assert task.cancelled()


async def test_cancel_and_wait_ends_a_task_whose_first_cancellation_was_lost() -> None:
    task = await _cancellable_as_a_reply_comes()
    await asyncio.wait_for(cancel_and_wait(task), 2)
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
