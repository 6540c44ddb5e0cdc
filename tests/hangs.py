"""What a test that hangs waits on: the stack of every asyncio task of the event loops running in
the process, printed to stderr when a test has run most of its pytest-timeout (tests/conftest.py
arms it for each test). pytest-timeout itself dumps only the threads' stacks, and a hung asyncio
test shows there as one thread idle in `select`: seen in tests/integration/
test_partitioned_projection.py, whose hang could not be told from its dump.

Read from a timer thread while the loop goes on (or is stuck in a call that never yields): the
tasks and their coroutines' frames are only read, and a task that changes meanwhile prints a stack
a moment old, which is all a diagnosis needs."""

import asyncio
import gc
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

DUMP_AT = 0.8
"""Of the test's timeout: late enough that a slow test has finished, early enough to print before
pytest-timeout fails it."""


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """The event loops running in this process, in any thread."""
    return [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]


def _frames(coro: Any) -> Iterator[str]:
    """Where a suspended coroutine waits, outermost first, following what each one awaits."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield f'    File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}'
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)


def dump_tasks(out: TextIO, title: str) -> None:
    print(f"\n{'+' * 20} {title} {'+' * 20}", file=out)
    for loop in running_loops():
        tasks = asyncio.all_tasks(loop)
        print(f"{len(tasks)} tasks of {loop!r}:", file=out)
        for task in sorted(tasks, key=lambda t: t.get_name()):
            print(f"  {task.get_name()}:", file=out)
            for line in _frames(task.get_coro()):
                print(line, file=out)
            waiter = getattr(task, "_fut_waiter", None)  # the future it waits on (a task, a lock's, a read's)
            if waiter is not None:
                print(f"    waiting on {waiter!r}"[:600], file=out)
    print("+" * (42 + len(title)), file=out, flush=True)


def timeout_of(config: Any, item: Any) -> float:
    """The item's pytest-timeout in seconds: its marker, else the command line, else the ini (0: none)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    option = config.getoption("timeout", None)
    return float(option if option is not None else config.getini("timeout") or 0)


def arm(name: str, timeout_s: float) -> threading.Timer | None:
    """Dump the tasks if the test still runs at DUMP_AT of its timeout (or after FLOWPLAN_TASK_DUMP_S
    seconds, to see a wait sooner when looping a test); cancel() the timer after it."""
    after_s = float(os.environ.get("FLOWPLAN_TASK_DUMP_S") or timeout_s * DUMP_AT)
    if after_s <= 0:
        return None
    timer = threading.Timer(after_s, dump_tasks, (sys.stderr, f"{name}: still running, its tasks"))
    timer.daemon = True
    timer.start()
    return timer
