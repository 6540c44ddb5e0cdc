"""The projection runner's fetch against a real nats-server (issue 14: projections that keep up): a
batch already delivered to the subscription's queue is taken without a wait per message (nats-py's
own next_msg starts two tasks per message), every message in log order, and an empty consumer still
times out as before."""

from collections.abc import Awaitable, Callable

import nats
import pytest
from nats.aio.msg import Msg
from nats.js import api

from libs.eventlog.runner import take_queued_first
from libs.localservers import LocalNats

pytestmark = pytest.mark.connected


async def test_a_fetch_takes_the_queued_messages_of_a_batch_without_waiting_for_each(nats_server: LocalNats) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="RUNNER_FETCH", subjects=["runner_fetch.>"]))
    for i in range(300):
        await js.publish(f"runner_fetch.{i % 3}", str(i).encode())
    config = api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.ALL, max_ack_pending=1000)
    await js.add_consumer("RUNNER_FETCH", config=config)
    sub = await js.pull_subscribe_bind(durable="c", stream="RUNNER_FETCH")
    waits = 0
    waiting: Callable[[float | None], Awaitable[Msg]] = sub._sub.next_msg

    async def counted(timeout: float | None = 1.0) -> Msg:  # noqa: ASYNC109 (next_msg's own signature)
        nonlocal waits
        waits += 1
        return await waiting(timeout)

    sub._sub.next_msg = counted  # type: ignore[method-assign]
    take_queued_first(sub)
    try:
        msgs = await sub.fetch(300, timeout=5)
        assert [int(m.data) for m in msgs] == list(range(300))
        assert waits < 100  # a wait when the queue ran dry, not one per message (300 without)
        await msgs[-1].ack()
        with pytest.raises(TimeoutError):
            await sub.fetch(10, timeout=0.5)
    finally:
        await js.delete_stream("RUNNER_FETCH")
        await nc.close()
