"""keys' composition root."""

import asyncio
import contextlib
import logging
from pathlib import Path

from aiohttp import web

from libs.clock import Clock, SystemClock
from libs.connections import close_nats, connect_nats, health
from libs.db import create_pool, migrate_async
from libs.eventlog.publisher import EventPublisher
from libs.eventlog.runner import ProjectionRunner
from libs.eventlog.streams import require_streams
from libs.service import spawn
from libs.settings import Settings
from libs.web import add_ops_routes, start_site
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.keys.responder import KeysResponder

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


class KeysService:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.registry = KeyRegistry()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        await migrate_async(settings.database_url, MIGRATIONS)
        self.pool = await create_pool(settings.database_url)
        self.nc = await connect_nats(settings.nats_url, "keys")
        partitions = await require_streams(self.nc.jetstream(), settings)
        projection = KeysProjection(self.registry)
        async with self.pool.acquire() as conn:
            await self.registry.load(conn, projection.schema)
        runner = ProjectionRunner(
            projection, self.pool, self.nc.jetstream(), stream=settings.stream, partitions=partitions,
            batch=settings.projection_batch, ack_wait_s=settings.ack_wait_s,
        )  # fmt: skip
        self._tasks.append(spawn(runner.run(), "keys-projection"))
        publisher = EventPublisher(self.nc, settings.stream)
        await publisher.start()
        responder = KeysResponder(self.registry, publisher, self.nc, self.clock)
        for subject, handler in responder.subjects().items():
            await self.nc.subscribe(subject, queue="keys", cb=handler)
        app = web.Application()
        add_ops_routes(app, lambda: health(self.nc, self.pool))
        self._site = await start_site(app, settings.host, settings.keys_port)
        log.info("keys: serving on %s:%d", settings.host, settings.keys_port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._site.cleanup()
        await close_nats(self.nc)
        await self.pool.close()
