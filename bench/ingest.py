"""Posting batches of usage to ingress for a bench: flat out from a few clients, or paced."""

import asyncio
import time
from collections.abc import Sequence

import aiohttp


async def post_batches(
    base: str, token: str, bodies: Sequence[bytes], *, events_per_body: int, rate: float | None, clients: int
) -> float:
    """POST each body to `base`/v1/usage (each must be accepted): with `rate` None as fast as
    `clients` concurrent clients go, else one body every `events_per_body / rate` seconds. Returns
    the time taken."""
    queue = list(reversed(bodies))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

        async def post(body: bytes) -> None:
            async with session.post(f"{base}/v1/usage", data=body) as r:
                assert r.status == 202, await r.text()

        async def client() -> None:
            while queue:
                await post(queue.pop())

        started = time.perf_counter()
        if rate is None:
            await asyncio.gather(*(client() for _ in range(clients)))
        else:
            sent = []
            for i, body in enumerate(bodies):
                delay = started + i * events_per_body / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                sent.append(asyncio.create_task(post(body)))
            await asyncio.gather(*sent)
        return time.perf_counter() - started
