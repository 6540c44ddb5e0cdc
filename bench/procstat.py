"""What the bench reads of processes and samples: CPU time from /proc, and percentiles."""

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def system_seconds(pid: int) -> float:
    """The part of cpu_seconds spent in the kernel (system time: syscalls, and for a socket write on
    loopback, the receiving side's TCP processing too); 0 once the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return int(fields[12]) / TICKS


def cpu_of(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU time used so far by each named group of processes."""
    return {name: sum(cpu_seconds(pid) for pid in pids) for name, pids in groups.items()}


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of the values; NaN when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
