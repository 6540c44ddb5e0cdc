"""Where a process's asyncio tasks wait: the stack of every task of every event loop running in it.

A hung call in an asyncio service is one thread idle in `epoll`, which a thread dump cannot tell
from a quiet service: what waits, and on what, is in the tasks' suspended coroutines. Every service
logs this report on SIGUSR1 (libs/service.py), so an operator, or a test whose call got no answer
(tests/conftest.py), can see where a call waits without stopping the process; the tests' own
process prints it when a test nears its timeout (tests/hangs.py).

Read from any thread while the loops go on (or are stuck in a call that never yields): the tasks
and their coroutines' frames are only read, and a task that changes meanwhile prints a stack a
moment old, which is all a diagnosis needs. Tasks waiting at the same place are listed once, with
their count: a server's hundred idle connections are one entry, a hung call stands out."""

import asyncio
import gc
import inspect
import logging
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_PROJECT = f"{Path(__file__).resolve().parents[1]}/"
END = "end of the tasks' stacks"
"""The report's last line: a reader of the log knows the whole report is there."""
_watched: "weakref.WeakSet[asyncio.AbstractEventLoop]" = weakref.WeakSet()


def watch(loop: asyncio.AbstractEventLoop) -> None:
    """Report this loop's tasks whether or not the collector tracks it: a service freezes what its
    start built out of collection (libs/service.settle_heap), and gc.get_objects() skips it then."""
    _watched.add(loop)


def running_loops() -> list[asyncio.AbstractEventLoop]:
    """The event loops running in this process, in any thread: those watched, and those the
    collector tracks."""
    found = {id(loop): loop for loop in _watched}
    found |= {id(o): o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)}
    return [loop for loop in found.values() if loop.is_running()]


def frames(coro: Any) -> Iterator[str]:
    """Where a suspended coroutine waits, outermost first, following what each one awaits (into an
    async generator too: an async fixture's teardown runs in one, awaited through its asend)."""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            yield f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
        awaited = next((a for n in ("cr_await", "gi_yieldfrom", "ag_await") if (a := getattr(coro, n, None))), None)
        if awaited is not None and type(awaited).__name__ == "async_generator_asend":
            awaited = next((r for r in gc.get_referents(awaited) if inspect.isasyncgen(r)), None)
        coro = awaited


def _short(filename: str) -> str:
    """A source file as a reader finds it: within a library (whose folder may be inside the project,
    as make's .venv is), the project or the standard library."""
    for root in ("site-packages/", _PROJECT, f"python{sys.version_info[0]}.{sys.version_info[1]}/"):
        if (at := filename.find(root)) >= 0:
            return filename[at + len(root) :]
    return filename


def tasks_report(title: str) -> str:
    """Every running loop's tasks, a line for each place where some wait: the chain of awaits,
    outermost first, and the future awaited as it prints. Tasks at the same place share the line,
    with their count and first few names."""
    lines = [f"{'+' * 20} {title} {'+' * 20}"]
    for loop in running_loops():
        tasks = asyncio.all_tasks(loop)
        places: dict[str, list[str]] = {}
        for task in sorted(tasks, key=lambda t: t.get_name()):
            place = " > ".join(frames(task.get_coro()))
            waiter = getattr(task, "_fut_waiter", None)  # the future it waits on (a task, a lock's, a read's)
            if waiter is not None:
                place += f" | waiting on {waiter!r}"[:400]
            places.setdefault(place, []).append(task.get_name())
        lines.append(f"{len(tasks)} tasks of {loop!r}:")
        for place, names in places.items():
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            lines.append(f"  {len(names)} x {shown}: {place}")
    lines.append(END)
    return "\n".join(lines)


def log_tasks() -> None:
    """The report, into the process's log (a signal handler's body: it must not raise)."""
    try:
        log.warning("%s", tasks_report("asyncio tasks, on SIGUSR1"))
    except Exception:
        log.exception("the tasks' stacks could not be read")
