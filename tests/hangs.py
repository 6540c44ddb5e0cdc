"""What a test that hangs waits on: the stack of every asyncio task of the event loops running in
the process, written to stderr when a test has run most of its pytest-timeout (tests/conftest.py
arms it for each test, past pytest's capture: a teardown that hangs after its test failed is timed
by nothing, pytest-timeout stopping at the failure, and its report never comes). pytest-timeout
itself dumps only the threads' stacks, where a hung asyncio test is one thread idle in `select`:
seen in tests/integration/test_partitioned_projection.py, whose hang could not be told from it.

Read from a timer thread while the loop goes on (or is stuck in a call that never yields): the
tasks and their coroutines' frames are only read, and a task that changes meanwhile prints a stack
a moment old, which is all a diagnosis needs."""

import asyncio
import gc
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

DUMP_AT = 0.8
"""Of the test's timeout: late enough that a slow test has finished, early enough to print before
pytest-timeout fails it."""


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """The event loops running in this process, in any thread."""
    return [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop) and o.is_running()]


def _frames(coro: Any) -> Iterator[str]:
    """Where a suspended coroutine waits, outermost first, following what each one awaits (into an
    async generator too: an async fixture's teardown runs in one, awaited through its asend)."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield f'    File "{frame.f_code.co_filename}", line {frame.f_lineno}, in {frame.f_code.co_name}'
        awaited = next((a for n in ("cr_await", "gi_yieldfrom", "ag_await") if (a := getattr(coro, n, None))), None)
        if awaited is not None and type(awaited).__name__ == "async_generator_asend":
            awaited = next((r for r in gc.get_referents(awaited) if inspect.isasyncgen(r)), None)
        coro = awaited


def tasks_report(title: str) -> str:
    lines = [f"\n{'+' * 20} {title} {'+' * 20}"]
    for loop in running_loops():
        tasks = asyncio.all_tasks(loop)
        lines.append(f"{len(tasks)} tasks of {loop!r}:")
        for task in sorted(tasks, key=lambda t: t.get_name()):
            lines.append(f"  {task.get_name()}:")
            lines += _frames(task.get_coro())
            waiter = getattr(task, "_fut_waiter", None)  # the future it waits on (a task, a lock's, a read's)
            if waiter is not None:
                lines.append(f"    waiting on {waiter!r}"[:600])
    lines.append("+" * (42 + len(title)))
    return "\n".join(lines) + "\n"


def timeout_of(config: Any, item: Any) -> float:
    """The item's pytest-timeout in seconds: its marker, else the command line, else the ini (0: none)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and (marker.args or "timeout" in marker.kwargs):
        return float(marker.args[0] if marker.args else marker.kwargs["timeout"])
    option = config.getoption("timeout", None)
    return float(option if option is not None else config.getini("timeout") or 0)


def arm(name: str, timeout_s: float, write: Callable[[str], None]) -> threading.Timer | None:
    """Dump the tasks if the test still runs at DUMP_AT of its timeout (or after FLOWPLAN_TASK_DUMP_S
    seconds, to see a wait sooner when looping a test); cancel() the timer after it."""
    after_s = float(os.environ.get("FLOWPLAN_TASK_DUMP_S") or timeout_s * DUMP_AT)
    if after_s <= 0:
        return None
    timer = threading.Timer(after_s, lambda: write(tasks_report(f"{name}: still running, its tasks")))
    timer.daemon = True
    timer.start()
    return timer
