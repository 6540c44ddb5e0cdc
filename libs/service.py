"""Run a service until SIGINT/SIGTERM: the one `main` every service's __main__ uses."""

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Protocol

import uvloop

from libs.settings import Settings, SettingsError, check_exposure, load_settings


class Service(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


def run_service(factory: Callable[[Settings], Service]) -> None:
    try:
        settings = load_settings()
        check_exposure(settings)
    except SettingsError as exc:  # refuse to start: a configuration mistake, not a crash to restart
        sys.exit(f"flowplan: refusing to start: {exc}")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve(settings: Settings) -> None:
        service = factory(settings)
        await service.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await service.stop()

    uvloop.run(serve(settings))


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
