"""quota's composition root: wires settings, clock, Postgres, NATS, projection and responder."""

import asyncio
import contextlib
import logging
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from libs.clock import Clock, SystemClock
from libs.connections import close_nats, connect_nats, health
from libs.db import create_pool, migrate_async
from libs.eventlog.runner import ProjectionRunner
from libs.eventlog.streams import require_streams
from libs.pricing.catalog import load_catalog
from libs.service import spawn
from libs.settings import Settings
from libs.web import add_ops_routes, start_site
from services.quota.domain.admission import Limits
from services.quota.projection import QuotaProjection, QuotaState
from services.quota.responder import (
    CHECK_SUBJECT,
    EVENTS_SUBJECT,
    RELEASE_SUBJECT,
    STATUS_SUBJECT,
    QuotaResponder,
)

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger(__name__)


class QuotaService:
    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.catalog = load_catalog(settings.catalog_path, settings.plans_path)
        self.state = QuotaState(timedelta(seconds=settings.reservation_timeout_s), self.catalog.default_usd_per_flow)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        await migrate_async(settings.database_url, MIGRATIONS)
        self.pool = await create_pool(settings.database_url)
        self.nc = await connect_nats(settings.nats_url, "quota")
        js = self.nc.jetstream()
        partitions = await require_streams(js, settings)
        limits = {plan.id: Limits(*plan.limits_micros) for plan in self.catalog.plans.values()}
        projection = QuotaProjection(self.state)
        async with self.pool.acquire() as conn:
            await self.state.load(conn, projection.schema)
        self.runner = ProjectionRunner(
            projection,
            self.pool,
            js,
            stream=settings.stream,
            partitions=partitions,
            batch=settings.projection_batch,
            ack_wait_s=settings.ack_wait_s,
        )
        self._tasks.append(spawn(self.runner.run(), "quota-projection"))
        self.responder = QuotaResponder(self.state, self.catalog, limits, self.clock, self.pool, projection.schema)
        await self.nc.subscribe(CHECK_SUBJECT, queue="quota", cb=self.responder.on_check)
        await self.nc.subscribe(STATUS_SUBJECT, queue="quota", cb=self.responder.on_status)
        await self.nc.subscribe(EVENTS_SUBJECT, queue="quota", cb=self.responder.on_events)
        await self.nc.subscribe(RELEASE_SUBJECT, queue="quota", cb=self.responder.on_release)
        app = web.Application()
        add_ops_routes(app, lambda: health(self.nc, self.pool))
        self._site = await start_site(app, settings.host, settings.quota_port)
        log.info("quota: serving on %s:%d", settings.host, settings.quota_port)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._site.cleanup()
        await close_nats(self.nc)
        await self.pool.close()
