"""Holding a projection runner still between two batches, for as long as a replay needs.

While paused no partition is in the middle of a batch: everything fetched was committed,
remembered after commit and acked, so the checkpoints in Postgres say exactly what the
projection holds. On resume the runner starts its partitions afresh: each reads its
checkpoint again and recreates its consumer from there, which is how a projection whose
tables were swapped goes on from the new tables' checkpoints.
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class RunnerPaused(Exception):
    """The runner did not reach a batch boundary in time (Postgres or NATS away?)."""


class Pause:
    def __init__(self, idle: Callable[[], bool] = lambda: False) -> None:
        self._idle = idle
        """True when no partition loop runs at all (an instance that owns no partition now): such a
        runner is paused as soon as asked; a loop that starts meanwhile sees the request first."""
        self._requested = asyncio.Event()
        self._parked = asyncio.Event()
        self._resumed = asyncio.Event()
        self._lock = asyncio.Lock()

    @property
    def requested(self) -> bool:
        """Read by the partition loops before each fetch: True makes them return."""
        return self._requested.is_set()

    async def unless_requested(self, fetch: Coroutine[Any, Any, list[T]]) -> list[T]:
        """The fetch's messages, or none when a pause is requested first: a partition waiting for
        new events must not hold the pause up. Messages the dropped fetch was given are not lost:
        on resume the consumer is recreated from the checkpoint. None either when the fetch timed out
        (nothing new, every second on an idle partition): its TimeoutError is not raised again here,
        since raising it from this frame, which holds the fetch's task, which holds the error, made
        a reference cycle per idle fetch for the garbage collector (libs/eventlog/idle.py)."""
        fetching = asyncio.ensure_future(fetch)
        fetching.add_done_callback(_consume)  # nats-py ends a cancelled fetch with a TimeoutError
        requested = asyncio.ensure_future(self._requested.wait())
        try:
            await asyncio.wait((fetching, requested), return_when=asyncio.FIRST_COMPLETED)
        finally:
            requested.cancel()
            if not fetching.done():
                fetching.cancel()
        if not fetching.done() or isinstance(fetching.exception(), TimeoutError):
            return []
        return fetching.result()

    async def park(self, *, last: bool = True) -> None:
        """Called by the runner once every partition loop has returned: wait for the resume. A
        runner whose partitions loop apart (run_partition) parks each, the last one with last=True."""
        if last:
            self._parked.set()
        await self._resumed.wait()
        self._resumed.clear()
        self._parked.clear()

    def all_parked(self) -> None:
        """Every partition that was running has parked or stopped (run_partition): the pause holds."""
        if self._requested.is_set():
            self._parked.set()

    @asynccontextmanager
    async def paused(self, timeout_s: float = 30.0) -> AsyncIterator[None]:
        """The runner stands still inside this block."""
        async with self._lock:
            self._requested.set()
            self._parked.clear()  # a park from the previous pause may not have woken up yet
            if self._idle():
                self._parked.set()
            try:
                try:
                    await asyncio.wait_for(self._parked.wait(), timeout_s)
                except TimeoutError as exc:
                    raise RunnerPaused(f"the live projection did not pause within {timeout_s:.0f} s") from exc
                yield
            finally:
                self._requested.clear()
                self._resumed.set()


def _consume(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled():
        task.exception()
