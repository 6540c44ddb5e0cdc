"""Run a service until SIGINT/SIGTERM: the one `main` every service's __main__ uses. SIGUSR1 logs
where its asyncio tasks wait (libs/taskdump.py) and the service goes on."""

import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

import uvloop

from libs import taskdump
from libs.settings import Settings, SettingsError, check_exposure, load_settings

YOUNG_COLLECTION_EVERY = 50_000
"""Net allocations of container objects between two collections of the youngest generation (Python's
default: 700). See settle_heap."""


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def run_service(
    factory: Callable[[Settings], Service], *, young_collection_every: int = YOUNG_COLLECTION_EVERY
) -> None:
    try:
        settings = load_settings()
        check_exposure(settings)
    except SettingsError as exc:  # refuse to start: a configuration mistake, not a crash to restart
        sys.exit(f"flowplan: refusing to start: {exc}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve(settings: Settings) -> None:
        loop = asyncio.get_running_loop()
        taskdump.watch(loop)
        loop.add_signal_handler(signal.SIGUSR1, taskdump.log_tasks)  # a start that hangs is seen too
        service = factory(settings)
        await service.start()
        settle_heap(young_collection_every)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await service.stop()

    uvloop.run(serve(settings))


def settle_heap(young_collection_every: int = YOUNG_COLLECTION_EVERY) -> None:
    """Python's cycle collector, left as it is, took about a tenth of the gateway's CPU under load
    (40 µs a call; the bench's alternation, docs/performance.md) and found nothing to free: in a
    3-second window at full load no call left one object in a reference cycle. Its cost was walking
    the objects of the calls in flight, collected every 700 net allocations, and each full collection
    walking everything the service built at start. So what start built is frozen out of collection,
    and the youngest generation is collected 70 times less often; cycles made on error paths
    (an exception's traceback) are still collected. No full collection first: quota's state at a
    million accounts is millions of objects (0.1 s a walk), more than start-up's little garbage is worth.
    A collection walks every young object still alive, so the rarer it is the longer it stops the
    loop: a responder whose every reply counts (quota) collects more often, in shorter pauses."""
    gc.freeze()
    gc.set_threshold(young_collection_every, 20, 50)


def fatal_on_error(task: "asyncio.Task[None]") -> None:
    """A background loop that dies takes its process with it (crash-only): a supervisor restarts
    it, instead of a service that answers health checks while its projection stands still."""

    def done(t: "asyncio.Task[None]") -> None:
        if t.cancelled():
            return
        if (exc := t.exception()) is not None:
            logging.getLogger(__name__).critical("task %s died", t.get_name(), exc_info=exc)
            logging.shutdown()
            os._exit(70)

    task.add_done_callback(done)
