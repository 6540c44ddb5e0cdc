"""A partition's wait for the next message of its pull subscription, leaving no garbage when nothing
comes (the runner's fetch on an idle partition, every second on each).

nats-py 2.16's `Subscription.next_msg` waits with `asyncio.wait_for` in a task of its own, and a wait
that times out leaves reference cycles behind: the TimeoutError's traceback holds the frames that
hold the tasks that hold the error. Only the garbage collector frees them; in quota a young
collection walked 10,000-30,000 such objects and held the loop up to 18 ms (docs/performance.md).
This wait has `asyncio.wait` take the queue's next message, which times out without raising, and
raises a new TimeoutError from a frame that holds nothing, so that fetch's caller frees it by
dropping it. nats-py 2.16 (pinned)."""

import asyncio

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


async def next_message(sub: Subscription, timeout: float | None) -> Msg:  # noqa: ASYNC109 (next_msg's own signature)
    """What `sub.next_msg(timeout)` answers: the next message, nats.errors.TimeoutError when none came
    within `timeout`, ConnectionClosedError once the connection is closed (a close cancels the wait
    as it cancels nats-py's own)."""
    if sub._conn.is_closed:
        raise nats.errors.ConnectionClosedError
    queue = sub._pending_queue
    getting = asyncio.ensure_future(queue.get())
    waits = sub._pending_next_msgs_calls
    name = f"idle-{id(getting)}"
    if waits is not None:
        waits[name] = getting
    try:
        await asyncio.wait((getting,), timeout=timeout)
    finally:
        if waits is not None:
            waits.pop(name, None)
        if not getting.done():
            getting.cancel()  # a message it was woken for stays queued: Queue.get takes it only on resuming
    if getting.cancelled():  # as next_msg: cancelled by the connection's close, or by another
        if sub._conn.is_closed:
            raise nats.errors.ConnectionClosedError
        raise asyncio.CancelledError
    if not getting.done():
        raise nats.errors.TimeoutError
    msg = getting.result()
    sub._pending_size -= len(msg.data)
    queue.task_done()
    return msg
