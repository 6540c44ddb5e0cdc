"""ingress's composition root."""

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
from libs.keycache import KeyCache
from libs.pricing.catalog import load_catalog
from libs.service import spawn
from libs.settings import Settings
from libs.web import add_ops_routes, api_errors, start_site
from services.ingress.api import IngressApi
from services.ingress.directory import Directory
from services.ingress.projection import IngressProjection

MIGRATIONS = Path(__file__).parent / "migrations"
DEDUPE_SWEEP_S = 600
log = logging.getLogger(__name__)


class IngressService:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        await migrate_async(settings.database_url, MIGRATIONS)
        self.pool = await create_pool(settings.database_url, max_size=20)
        self.nc = await connect_nats(settings.nats_url, "ingress")
        js = self.nc.jetstream(publish_async_max_pending=20_000)
        partitions = await require_streams(js, settings)
        catalog = load_catalog(settings.catalog_path, settings.plans_path)
        self.directory = Directory(catalog.default_usd_per_flow)
        projection = IngressProjection(self.directory)
        async with self.pool.acquire() as conn:
            await self.directory.load(conn, projection.schema)
        self.runner = ProjectionRunner(
            projection,
            self.pool,
            js,
            stream=settings.stream,
            partitions=partitions,
            batch=settings.projection_batch,
            ack_wait_s=settings.ack_wait_s,
        )
        self._tasks.append(spawn(self.runner.run(), "ingress-projection"))
        self._tasks.append(spawn(self._sweep_dedupe(), "ingress-dedupe-sweep"))
        publisher = EventPublisher(self.nc, settings.stream)
        await publisher.start()
        app = web.Application(middlewares=[api_errors], client_max_size=settings.max_body_bytes)
        keys = KeyCache(self.nc)
        await keys.start()
        IngressApi(settings, catalog, self.directory, publisher, self.pool, self.nc, keys, self.clock).routes(app)
        add_ops_routes(app, lambda: health(self.nc, self.pool))
        self._site = await start_site(app, settings.host, settings.ingress_port)
        log.info("ingress: serving on http://%s:%d", settings.host, settings.ingress_port)

    async def _sweep_dedupe(self) -> None:
        """Forget usage event ids older than the dedupe retention (longer than the accepted lateness)."""
        while True:
            with contextlib.suppress(Exception):
                await self.pool.execute(
                    "DELETE FROM ingress.seen_events WHERE seen_at < now() - make_interval(secs => $1)",
                    float(self.settings.dedupe_retention_s),
                )
            await asyncio.sleep(DEDUPE_SWEEP_S)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._site.cleanup()
        await close_nats(self.nc)
        await self.pool.close()
