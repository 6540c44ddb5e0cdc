"""Where a process's leases are renewed: a thread with an event loop and a NATS connection of its own
(libs/leases.py's docstring says why)."""

import asyncio
import concurrent.futures
import threading
from typing import Any

from nats.aio.client import Client

from libs import taskdump
from libs.cancelling import cancel_and_wait
from libs.connections import close_nats, connect_nats
from libs.leases import PartitionLeases, instance_name


class LeaseThread:
    """Under the GIL it still gets its turn: a thread that waits for the GIL has it within the switch
    interval (5 ms), however busy the service's loop is. `replicas`: the lease bucket's, as the
    deployment's streams'."""

    def __init__(self, nats_url: str, name: str, replicas: int = 1) -> None:
        self._url, self._name, self._replicas = nats_url, name, replicas
        self._nc: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start the thread; return once its connection is made (raise what failed it)."""
        connected: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, args=(connected,), name=f"{self._name}-leases", daemon=True)
        self._thread.start()
        await asyncio.wrap_future(connected)

    def _run(self, connected: "concurrent.futures.Future[None]") -> None:
        loop = self._loop = asyncio.new_event_loop()
        taskdump.watch(loop)
        try:
            self._nc = loop.run_until_complete(connect_nats(self._url, f"{self._name}-leases"))
        except BaseException as exc:
            loop.close()
            connected.set_exception(exc)
            return
        connected.set_result(None)
        loop.run_forever()  # until close()
        for task in asyncio.all_tasks(loop):  # leases a failed start left renewing, if any
            loop.run_until_complete(cancel_and_wait(task))
        loop.run_until_complete(close_nats(self._nc))
        loop.close()

    def leases(self, service: str, partitions: int, instance: str | None = None, **options: Any) -> PartitionLeases:
        """This process's leases of the service's partitions (PartitionLeases' options), renewed here."""
        assert self._nc is not None and self._loop is not None, "start() first"
        return PartitionLeases(self._nc.jetstream(), service, instance or instance_name(), partitions,
                               replicas=self._replicas, loop=self._loop, **options)  # fmt: skip

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def close(self) -> None:
        """Close the connection and end the thread (the leases stopped first: what they hold runs out)."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join)
