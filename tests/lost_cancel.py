"""A task whose next cancel() is lost, as Python 3.11's asyncio.wait_for loses one (libs/cancelling.py):
a loop of requests, each reply awaited with wait_for as nats-py awaits them, caught in the moment a
reply has come in and it has not resumed yet. Made so with a future for a reply, not a server's, so
that the moment is certain rather than hit now and then."""

import asyncio
import contextlib

GIVES_UP_S = 3.0
"""The loop ends by itself (not cancelled) after this long: an await of it that a lost cancel left
waiting returns then, and the test sees the task was never cancelled, rather than hang."""


async def _requests(replies: list["asyncio.Future[None]"]) -> None:
    loop = asyncio.get_running_loop()
    gives_up = loop.time() + GIVES_UP_S
    while loop.time() < gives_up:  # no reply comes after the first: it asks again every 0.1 s
        reply = loop.create_future()
        replies.append(reply)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reply, 0.1)


async def as_a_reply_comes() -> "asyncio.Task[None]":
    """The task, started and caught in that moment: cancel it (or have it cancelled) at once, in this
    task and before awaiting anything else (not through asyncio.wait_for, whose own task runs later)."""
    replies: list[asyncio.Future[None]] = []
    task = asyncio.create_task(_requests(replies))
    await asyncio.sleep(0)  # it waits for its first reply
    replies[-1].set_result(None)
    await asyncio.sleep(0)  # wait_for's waiter released; the task resumes after this task's next step
    return task
