"""Ending a background task for certain: `cancel_and_wait`.

On Python 3.11 one `task.cancel()` does not always end a task. `asyncio.wait_for` loses a
cancellation that arrives once the future it waits on has completed but before the task has
resumed: it returns the result as if never cancelled (CPython issue 86296, bpo-42130; fixed in 3.12,
whose wait_for is built on asyncio.timeout). nats-py waits for every request's reply with wait_for,
so a loop of NATS requests (a lease's renewals, a partition's take-over) cancelled as a reply comes
in goes on looping, and `task.cancel(); await task` waits for ever: seen as a 300 s hang of
tests/integration/test_partitioned_projection.py, and 27 stops in 300 of a lease loop ticking every
50 ms hung so."""

import asyncio
from typing import Any

AGAIN_S = 0.1
"""Cancel again after this long: a lost cancellation is found at the task's next await."""


async def cancel_and_wait(task: "asyncio.Future[Any]") -> None:
    """Cancel the task and return once it has ended, cancelling it again while it goes on. Its
    outcome is not raised (a cancelled task's CancelledError included); read it from the task. A
    task whose clean-up after a cancellation awaits for longer than AGAIN_S must shield it (as
    asyncpg's pool does its release), or that clean-up is cancelled too."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=AGAIN_S)
