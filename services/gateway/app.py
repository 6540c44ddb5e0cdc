"""gateway's composition root."""

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web

from libs.clock import Clock, SystemClock
from libs.connections import close_nats, connect_nats
from libs.eventlog.publisher import EventPublisher
from libs.keycache import KeyCache
from libs.pricing.catalog import load_catalog
from libs.service import spawn
from libs.settings import Settings
from libs.web import add_ops_routes, start_site
from services.gateway.api import GatewayApi
from services.gateway.recorder import UsageRecorder
from services.gateway.upstreams import Upstreams

log = logging.getLogger(__name__)


class GatewayService:
    """Stateless: no database. Keys come from the keys service, admission from quota."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.settings
        self.nc = await connect_nats(settings.nats_url, "gateway")
        publisher = EventPublisher(self.nc, settings.stream)
        await publisher.start()
        self.recorder = UsageRecorder(publisher)
        self._tasks.append(spawn(self.recorder.run(), "gateway-usage-recorder"))
        keys = KeyCache(self.nc)
        await keys.start()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=settings.upstream_timeout_s),
            auto_decompress=False,
        )
        simulator = f"http://{settings.host if settings.host != '0.0.0.0' else '127.0.0.1'}:{settings.simulator_port}"
        upstreams = Upstreams(settings.upstreams, simulator)
        app = web.Application(client_max_size=settings.max_body_bytes)
        catalog = load_catalog(settings.catalog_path, settings.plans_path)
        GatewayApi(settings, catalog, keys, self.nc, self.session, upstreams, self.recorder, self.clock).routes(app)

        async def healthy() -> dict[str, bool]:
            return {"nats": self.nc.is_connected}

        add_ops_routes(app, healthy)
        self._site = await start_site(app, settings.host, settings.gateway_port)
        log.info("gateway: serving on http://%s:%d", settings.host, settings.gateway_port)

    async def stop(self) -> None:
        await self._site.cleanup()
        await self.recorder.flush()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.session.close()
        await close_nats(self.nc)
