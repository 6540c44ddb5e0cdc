"""Replies handed over as nats-py reads them (libs.inbox), against a real nats-server: each reply
reaches its own request, with no task of the subscription's own between; a timeout, nobody
listening and a request given up leave nothing behind; a handler that fails does not stop the
connection's reading."""

import asyncio

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.inbox import Requests, subscribe_handing_over

pytestmark = pytest.mark.connected


async def test_concurrent_requests_each_get_their_own_reply(nc: Client) -> None:
    async def echo(msg: Msg) -> None:
        await asyncio.sleep(0.001 * (int(msg.data) % 7))  # replies come back out of order
        await msg.respond(b"re:" + msg.data + (msg.headers or {}).get("x-trace", "").encode())

    await nc.subscribe("inbox.echo", cb=echo)
    requests = Requests(nc)
    await requests.start()
    replies = await asyncio.gather(
        *(requests.request("inbox.echo", str(i).encode(), 5.0, {"x-trace": f"/{i}"}) for i in range(500))
    )
    assert [r.data for r in replies] == [f"re:{i}/{i}".encode() for i in range(500)]
    assert requests._waiting == {}


async def test_a_reply_is_handed_over_by_the_reading_task_itself(nc: Client) -> None:
    """What the module is for: no queue is filled and no task of the subscription's is woken."""
    seen: list[tuple[bytes, asyncio.Task[object] | None]] = []
    subscription = await subscribe_handing_over(
        nc, "inbox.handed", lambda msg: seen.append((msg.data, asyncio.current_task()))
    )
    for i in range(3):
        await nc.publish("inbox.handed", str(i).encode())
    await nc.flush()
    for _ in range(100):
        if len(seen) == 3:
            break
        await asyncio.sleep(0.01)
    assert [data for data, _ in seen] == [b"0", b"1", b"2"]
    assert {task for _, task in seen} == {nc._reading_task}
    assert subscription._wait_for_msgs_task is None and subscription.pending_msgs == 0


async def test_timeout_and_nobody_listening_are_errors_and_leave_nothing_waiting(nc: Client) -> None:
    requests = Requests(nc)
    await requests.start()
    with pytest.raises(nats.errors.NoRespondersError):
        await requests.request("inbox.nobody", b"x", 5.0)

    async def never(msg: Msg) -> None:
        pass

    await nc.subscribe("inbox.silent", cb=never)
    started = asyncio.get_running_loop().time()
    with pytest.raises(nats.errors.TimeoutError):
        await requests.request("inbox.silent", b"x", 0.2)
    assert 0.15 < asyncio.get_running_loop().time() - started < 2.0
    asked = asyncio.create_task(requests.request("inbox.silent", b"x", 5.0))
    await asyncio.sleep(0.05)
    asked.cancel()  # a client hanging up
    with pytest.raises(asyncio.CancelledError):
        await asked
    assert requests._waiting == {}


async def test_a_failing_handler_does_not_stop_the_reading(nc: Client) -> None:
    def fails(msg: Msg) -> None:
        raise ValueError("a bug in a handler")

    await subscribe_handing_over(nc, "inbox.fails", fails)
    await nc.publish("inbox.fails", b"x")

    async def echo(msg: Msg) -> None:
        await msg.respond(msg.data)

    await nc.subscribe("inbox.after", cb=echo)
    requests = Requests(nc)
    await requests.start()
    assert (await requests.request("inbox.after", b"still reading", 5.0)).data == b"still reading"
