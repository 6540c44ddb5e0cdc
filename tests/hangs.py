"""What a test that hangs waits on: the stacks of the asyncio tasks of the event loops running in
the process (libs/taskdump.py), written to stderr when a test has run most of its pytest-timeout
(tests/conftest.py arms it for each test, past pytest's capture: a teardown that hangs after its
test failed is timed by nothing, pytest-timeout stopping at the failure, and its report never
comes). pytest-timeout itself dumps only the threads' stacks, where a hung asyncio test is one
thread idle in `select`: seen in tests/integration/test_partitioned_projection.py, whose hang
could not be told from it."""

import os
import threading
from collections.abc import Callable
from typing import Any

from libs.taskdump import tasks_report

DUMP_AT = 0.8
"""Of the test's timeout: late enough that a slow test has finished, early enough to print before
pytest-timeout fails it."""


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
    timer = threading.Timer(after_s, lambda: write("\n" + tasks_report(f"{name}: still running, its tasks") + "\n"))
    timer.daemon = True
    timer.start()
    return timer
