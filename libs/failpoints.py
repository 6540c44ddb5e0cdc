"""Failpoints: named places where a fault test may kill the process on purpose.

FLOWPLAN_FAILPOINT="after_commit:3" makes the third pass through
`hit("after_commit")` end the process at once, the way a SIGKILL or a power cut
would. Unset (the default, and in production), hit() is a dictionary lookup.
fires(name) counts the same way but only answers True, once, for faults the caller acts out
itself (a message lost in transit).
"""

import os
import sys

from libs.settings import read_setting

_armed: dict[str, int] = {}
for spec in filter(None, str(read_setting("failpoint")).split(",")):
    name, _, count = spec.partition(":")
    _armed[name.strip()] = int(count or "1")


def hit(name: str) -> None:
    remaining = _armed.get(name)
    if remaining is None:
        return
    remaining -= 1
    _armed[name] = remaining
    if remaining <= 0:
        sys.stderr.write(f"failpoint {name}: killing process\n")
        sys.stderr.flush()
        os._exit(137)


def fires(name: str) -> bool:
    remaining = _armed.get(name)
    if remaining is None:
        return False
    if remaining <= 1:
        del _armed[name]
        sys.stderr.write(f"failpoint {name}: fired\n")
        sys.stderr.flush()
        return True
    _armed[name] = remaining - 1
    return False
