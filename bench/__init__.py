"""`make bench`: throughput and latency of the platform core, side by side with its building blocks."""

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def work_dir() -> Iterator[Path]:
    """A fresh folder for a bench run's servers and logs, removed afterwards (a durable Postgres and a
    JetStream store of a million events are gigabytes); kept, and named, with FLOWPLAN_BENCH_KEEP=1."""
    work = Path(tempfile.mkdtemp(prefix="flowplan-bench-"))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        if os.environ.get("FLOWPLAN_BENCH_KEEP") == "1":
            print(f"bench data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
