"""ingress's composition root."""

import asyncio
import contextlib
from pathlib import Path

from aiohttp import web

from libs.clock import Clock, SystemClock
from libs.eventlog.follower import LogFollower
from libs.keycache import KeyCache
from libs.leases import PartitionLeases
from libs.pricing.catalog import load_catalog
from libs.runtime import Runtime
from libs.settings_views import IngressSettings
from libs.web import api_errors, refuse_control_characters
from services.ingress.api import IngressApi
from services.ingress.directory import Directory
from services.ingress.follower import (
    LEASE_S,
    loaded_from,
    project_while_owner,
    sync_when_several,
)
from services.ingress.projection import IngressProjection
from services.ingress.suspensions import Suspensions
from services.ingress.usage import ingest_clients

MIGRATIONS = Path(__file__).parent / "migrations"
DEDUPE_SWEEP_S = 600


class IngressService:
    def __init__(self, settings: IngressSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.runtime = Runtime("ingress", settings)
        self.leases: PartitionLeases | None = None

    async def start(self) -> None:
        settings, runtime = self.settings, self.runtime
        ingest_clients(settings.ingest_token, settings.ingest_tokens)  # a bad FLOWPLAN_INGEST_TOKENS stops the start
        await runtime.connect(MIGRATIONS, pool_size=20)
        catalog = load_catalog(settings.catalog_path, settings.plans_path)
        self.directory = Directory(catalog.default_usd_per_flow, catalog.insider_multiplier)
        projection = IngressProjection(self.directory)
        async with runtime.db.acquire() as conn:
            loaded = await loaded_from(conn, projection.schema, projection.name, settings.partitions)
            await self.directory.load(conn, projection.schema)
        # Several instances (follower.py): each follows the account events; one runs the projection.
        follower = LogFollower(runtime.nc.jetstream(), settings.stream, projection.event_types, self.directory.apply)
        await follower.start(loaded)
        self.leases = (await runtime.lease_thread()).leases("ingress-projection", 1, lease_s=LEASE_S, rebalance=False)
        await self.leases.start()
        self.directory.sync = sync_when_several(follower, self.leases)
        runtime.spawn(project_while_owner(runtime, projection, self.leases), "ingress-projection-owner")
        runtime.spawn(self._sweep_dedupe(), "ingress-dedupe-sweep")
        keys = KeyCache.from_settings(runtime.nc, settings)
        await keys.start()
        suspensions = Suspensions(runtime.nc)
        await suspensions.start()
        app = web.Application(
            middlewares=[api_errors, refuse_control_characters], client_max_size=settings.max_body_bytes
        )
        publisher = await runtime.publisher()
        api = IngressApi(
            settings, catalog, self.directory, publisher, runtime.db, runtime.nc, keys, suspensions, self.clock
        )
        api.routes(app)
        await runtime.serve(settings.ingress_port, app)

    async def _sweep_dedupe(self) -> None:
        """Forget usage event ids older than the dedupe retention (longer than the accepted lateness)."""
        while True:
            with contextlib.suppress(Exception):
                await self.runtime.db.execute(
                    "DELETE FROM ingress.seen_events WHERE seen_at < now() - make_interval(secs => $1)",
                    float(self.settings.dedupe_retention_s),
                )
            await asyncio.sleep(DEDUPE_SWEEP_S)

    async def stop(self) -> None:
        if self.leases is not None:
            with contextlib.suppress(Exception):
                await self.leases.stop()  # hand the projection over at once
        await self.runtime.close()
