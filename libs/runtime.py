"""What every service process holds and starts the same way: its NATS connection, its
Postgres pool and migrations, its projection runner, its background tasks, and the HTTP
site that serves its API or just /healthz and /metrics. A service's composition root
(`app.py`) wires its own parts onto one Runtime and lets it close them in order."""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec
from aiohttp import web
from nats.aio.client import Client

from libs import tracing
from libs.cancelling import cancel_and_wait
from libs.connections import close_nats, connect_nats, health, subscribed
from libs.db import create_pool, migrate_async
from libs.eventlog.deadletters import DeadLetterRetrier
from libs.eventlog.monitor import ProjectionMonitor
from libs.eventlog.partitioned import PartitionedProjection
from libs.eventlog.projection import Fence
from libs.eventlog.publisher import EventPublisher
from libs.eventlog.runner import ProjectionRunner
from libs.eventlog.streams import require_streams
from libs.leases import PARTITION_LEASE_S
from libs.leasethread import LeaseThread
from libs.observability import install as install_metrics
from libs.replay.control import ReplayControl
from libs.replay.instances import Peers
from libs.replay.rebuild import Rebuildable
from libs.rpc import Responders
from libs.service import fatal_on_error
from libs.settings_views import DatabaseSettings, ProjectionSettings, RuntimeSettings
from libs.web import add_ops_routes, start_site
from proto.v1.rpc import Rpc

log = logging.getLogger(__name__)
SHUTDOWN_STEP_S = 5.0
Req = TypeVar("Req", bound=msgspec.Struct)
Rep = TypeVar("Rep")


class Runtime:
    def __init__(self, name: str, settings: RuntimeSettings) -> None:
        self.name = name
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sites: list[web.AppRunner] = []
        self._partitioned: list[PartitionedProjection] = []
        self._responders: Responders | None = None
        self._responding = False
        self._starting = asyncio.Lock()
        """Held while the responders start, and while a projection registers its commands: one started
        concurrently (ingress's, once its instance holds the lease) is never half-registered."""
        self._lease_thread: LeaseThread | None = None
        self._lease_thread_starting = asyncio.Lock()
        install_metrics(name)
        self.tracer = tracing.tracer(name)

    async def connect(self, migrations: Path | None = None, pool_size: int = 10) -> None:
        """NATS always; Postgres (after the service's migrations) when the service has tables."""
        if migrations is not None:
            if not isinstance(self.settings, DatabaseSettings):
                raise TypeError(f"{self.name}: migrations given but its settings hold no database_url")
            await migrate_async(self.settings.database_url, migrations)
            self.pool = await create_pool(self.settings.database_url, max_size=pool_size)
        self.nc: Client = await connect_nats(self.settings.nats_url, self.name)

    async def lease_thread(self) -> LeaseThread:
        """Where this process's leases are renewed (libs/leasethread.py), started on first use."""
        async with self._lease_thread_starting:
            if self._lease_thread is None:
                thread = LeaseThread(self.settings.nats_url, self.name, self.settings.stream_replicas)
                await thread.start()
                self._lease_thread = thread
            return self._lease_thread

    @property
    def db(self) -> asyncpg.Pool:
        assert self.pool is not None, f"{self.name} connected without a database"
        return self.pool

    async def publisher(self) -> EventPublisher:
        publisher = EventPublisher(self.nc, self.settings.stream, tracer=self.tracer)
        await publisher.start()
        return publisher

    async def project(
        self,
        projection: Rebuildable,
        *,
        every_partition: bool = True,
        peers: Peers | None = None,
        fence: Fence | None = None,
    ) -> ProjectionRunner:
        """Run the projection over every partition of the event log, and measure its lag, in the
        background, and answer `flowplan dlq retry` for the events it dead-letters and `flowplan
        replay` for the projection. every_partition=False: the caller runs the partitions it owns
        (`runner.run_partition`, services/quota/partitions.py); its instances, `peers`, are all
        paused for a replay (libs/replay/instances.py). fence: the revision of the lease under which
        each partition is projected here (libs/eventlog/runner.py, "Fencing")."""
        if not isinstance(self.settings, ProjectionSettings):
            raise TypeError(f"{self.name}: a projection needs a database_url in its settings")
        settings = self.settings
        partitions = await require_streams(self.nc.jetstream(), settings)
        runner = ProjectionRunner(
            projection, self.db, self.nc.jetstream(), stream=self.settings.stream, partitions=partitions,
            batch=self.settings.projection_batch, ack_wait_s=self.settings.ack_wait_s,
            linger_s=self.settings.projection_linger_s, tracer=self.tracer, fence=fence,
        )  # fmt: skip
        if every_partition:
            self.spawn(runner.run(), f"{self.name}-projection")
        monitor = ProjectionMonitor(runner, self.db, self.nc.jetstream(), stream=self.settings.stream,
                                    partitions=partitions)  # fmt: skip
        self.spawn(monitor.run(), f"{self.name}-projection-monitor")
        async with self._starting:
            DeadLetterRetrier(runner, self.nc.jetstream(), self.settings.dlq_stream).serve(self)
            ReplayControl(projection, runner, self.db, self.nc, settings, self.spawn, peers).serve(self)
            if self._responding:  # a projection started after the others: its commands are answered now
                await self._start_responders()
        return runner

    async def project_partitioned(self, projection: Rebuildable) -> PartitionedProjection:
        """Run the projection over the partitions this instance holds a lease for
        (`owner.<service>.<partition>`, shared with the service's other instances and rebalanced when
        one joins or leaves: libs/eventlog/partitioned.py), with what `project` adds. The lease a
        partition is projected under: `leases.revision(partition)`, made before the runner so that
        the runner's commits can be fenced by it."""
        leases = (await self.lease_thread()).leases(
            self.name, self.settings.partitions, lease_s=PARTITION_LEASE_S, rebalance=True, hand_over=True,
        )  # fmt: skip
        # Fenced by each partition's lease; a replay pauses every instance (libs/replay/instances.py).
        runner = await self.project(projection, every_partition=False, peers=leases, fence=leases.revision)
        await leases.start()
        partitioned = PartitionedProjection(leases, runner)
        self._partitioned.append(partitioned)
        self.spawn(partitioned.run(), f"{self.name}-partitions")
        return partitioned

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A background loop whose death takes the process with it (crash-only)."""
        task = asyncio.create_task(coro, name=name)
        fatal_on_error(task)
        self._tasks.append(task)

    async def answer(self, subject: str, handler: tracing.MsgHandler) -> None:
        """Answer a request/reply subject in the service's queue group; a request that carries a
        trace context is handled in a server span of it. Returns once the server has the subscription:
        a request sent from elsewhere then reaches it, never "no responders"."""
        await self.nc.subscribe(subject, queue=self.name, cb=tracing.answering(self.tracer, subject, handler))
        await subscribed(self.nc)

    def reply(self, rpc: Rpc[Req, Rep], handler: Callable[[Req], Awaitable[Rep]], **options: Any) -> None:
        """Answer a command or query with a typed handler (faststream, libs.rpc), in the service's
        queue group; the responders start with `start_responders` or `serve`."""
        if self._responders is None:
            self._responders = Responders(self.name, self.settings.nats_url, self.tracer)
        self._responders.reply(rpc, handler, **options)

    async def start_responders(self) -> None:
        """Start answering the commands and queries registered so far (`serve` does it too; `project`
        again for a projection started later, as ingress's once its instance holds the lease)."""
        async with self._starting:
            await self._start_responders()

    async def _start_responders(self) -> None:
        if self._responders is not None:
            await self._responders.start()
        self._responding = True  # from now on, what registers later starts at once

    async def health(self) -> dict[str, bool]:
        if self.pool is None:
            return {"nats": self.nc.is_connected}
        return await health(self.nc, self.pool)

    async def serve(self, port: int, app: web.Application | None = None, **server_options: Any) -> None:
        """Serve the app (or a bare one) on the port, with /healthz and /metrics added; the app's
        own routes are traced. `server_options` tune aiohttp's request handler (timeouts)."""
        if app is not None and self.tracer is not None:
            app.middlewares.insert(0, tracing.http_middleware(self.tracer))
        await self.start_responders()
        app = app or web.Application()
        add_ops_routes(app, self.health)
        self._sites.append(await start_site(app, self.settings.host, port, **server_options))
        log.info("%s: serving on http://%s:%d", self.name, self.settings.host, port)

    async def stop_listening(self) -> None:
        """Take no new connections (idle keep-alive ones close); requests in progress go on."""
        for runner in self._sites:
            for site in list(runner.sites):
                await site.stop()
            if runner.server is not None:
                runner.server.pre_shutdown()

    async def stop_serving(self) -> None:
        """Stop taking requests (waiting for those in progress); the rest keeps running."""
        if self._responders is not None and self._responding:
            self._responding = False
            await self._responders.stop()
        while self._sites:
            await self._sites.pop().cleanup()

    async def close(self) -> None:
        await self.stop_serving()
        for partitioned in self._partitioned:  # each partition's last batch committed, then handed over
            await partitioned.stop()
        for task in self._tasks:
            await cancel_and_wait(task)  # not one cancel(): it can be lost (libs/cancelling.py)
            if not task.cancelled() and (exc := task.exception()) is not None:
                raise exc
        if self._lease_thread is not None:  # the leases stopped (above, or by the service before)
            await self._lease_thread.close()
        await close_nats(self.nc)
        if self.pool is not None:
            try:  # a pool whose server is gone can wait forever on its connections
                await asyncio.wait_for(self.pool.close(), SHUTDOWN_STEP_S)
            except TimeoutError:
                self.pool.terminate()
