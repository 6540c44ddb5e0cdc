"""What the integration modules share: waits on the event log's consumers and dead letters.
Modules import these from here, never from one another's tests."""

import asyncio

from tests.stack import Stack


async def dead_letters(stack: Stack) -> int:
    nc = await stack.nats()
    try:
        info = await nc.jetstream().stream_info(stack.settings.dlq_stream)
        return int(info.state.messages)
    finally:
        await nc.close()


async def settled(stack: Stack, within: float = 30.0) -> None:
    """Until every projection consumer has applied and acked all it was sent."""
    nc = await stack.nats()
    try:
        js = nc.jetstream()
        deadline = asyncio.get_running_loop().time() + within
        while True:
            consumers = await js.consumers_info(stack.settings.stream)
            if all(c.num_pending == 0 and c.num_ack_pending == 0 for c in consumers):
                return
            assert asyncio.get_running_loop().time() < deadline, [
                (c.name, c.num_pending, c.num_ack_pending) for c in consumers
            ]
            await asyncio.sleep(0.1)
    finally:
        await nc.close()
