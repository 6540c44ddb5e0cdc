"""libs/taskdump.py: where a loop's tasks wait, the same places once with their count."""

import asyncio
import gc
import re

from libs import taskdump


async def waits_for(event: asyncio.Event) -> None:
    await event.wait()


async def sleeps() -> None:
    await asyncio.sleep(60)


async def test_tasks_waiting_at_one_place_are_listed_once_with_their_count() -> None:
    event = asyncio.Event()
    waiting = [asyncio.create_task(waits_for(event), name=f"waiter-{i}") for i in range(5)]
    asleep = asyncio.create_task(sleeps(), name="sleeper")
    await asyncio.sleep(0)
    try:
        report = taskdump.tasks_report("now")
    finally:
        event.set()
        asleep.cancel()
        await asyncio.gather(*waiting, asleep, return_exceptions=True)
    assert report.splitlines()[0] == f"{'+' * 20} now {'+' * 20}" and report.endswith(taskdump.END)
    assert re.search(
        r"^  5 x waiter-0, waiter-1, waiter-2, \.\.\.: tests/unit/test_taskdump.py:\d+ waits_for > "
        r"asyncio/locks.py:\d+ wait \| waiting on <Future pending",
        report, re.M,
    )  # fmt: skip
    assert re.search(
        r"^  1 x sleeper: tests/unit/test_taskdump.py:\d+ sleeps > asyncio/tasks.py:\d+ sleep", report, re.M
    )


async def test_a_loop_the_collector_no_longer_tracks_is_reported_once_watched() -> None:
    """A service freezes what its start built (libs/service.settle_heap): gc.get_objects() skips it."""
    loop = asyncio.get_running_loop()
    gc.freeze()
    try:
        assert loop not in taskdump.running_loops()
        taskdump.watch(loop)
        assert taskdump.running_loops().count(loop) == 1
    finally:
        gc.unfreeze()
