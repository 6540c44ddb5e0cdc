"""gateway's composition root."""

import aiohttp
from aiohttp import web

from libs.clock import Clock, SystemClock
from libs.inbox import Requests
from libs.keycache import KeyCache
from libs.pricing.catalog import load_catalog
from libs.runtime import Runtime
from libs.settings_views import GatewaySettings, narrowed
from services.gateway import errors
from services.gateway.api import GatewayApi
from services.gateway.inflight import InflightCalls
from services.gateway.pipeline import CallPipeline
from services.gateway.recorder import UsageRecorder
from services.gateway.upstreams import Upstreams


class GatewayService:
    """Stateless: no database. Keys come from the keys service, admission from quota."""

    def __init__(self, settings: GatewaySettings, clock: Clock | None = None) -> None:
        self.settings: GatewaySettings = narrowed(settings, GatewaySettings)
        """Only the gateway's settings: never database_url, nor the admin and ingest tokens."""
        self.clock = clock or SystemClock()
        self.runtime = Runtime("gateway", self.settings)

    async def start(self) -> None:
        settings, runtime = self.settings, self.runtime
        await runtime.connect()
        self.recorder = UsageRecorder(
            await runtime.publisher(), connected=lambda: runtime.nc.is_connected,
            store_timeout_s=settings.usage_store_timeout_s, durable=settings.usage_durability == "ack",
        )  # fmt: skip
        runtime.spawn(self.recorder.run(), "gateway-usage-recorder")
        keys = KeyCache.from_settings(runtime.nc, settings)
        await keys.start()
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=settings.upstream_timeout_s),
            auto_decompress=False,
        )
        simulator_host = "127.0.0.1" if settings.host == "0.0.0.0" else settings.host
        upstreams = Upstreams(settings.upstreams, f"http://{simulator_host}:{settings.simulator_port}")
        catalog = load_catalog(settings.catalog_path, settings.plans_path)
        app = web.Application(client_max_size=settings.max_body_bytes)
        errors.install(app)
        inflight = InflightCalls(self.clock)
        runtime.spawn(inflight.run(runtime.nc, settings.heartbeat_interval_s), "gateway-heartbeat")
        requests = Requests(runtime.nc)
        await requests.start()
        pipeline = CallPipeline(
            settings, catalog, keys, runtime.nc, self.session, upstreams, self.recorder, self.clock, inflight, requests,
            traced=runtime.tracer is not None,
        )  # fmt: skip
        self.api = GatewayApi(pipeline)
        self.api.routes(app)
        # aiohttp arms the keep-alive timer when a connection opens and closes the connection if no
        # whole request head has arrived when it fires: that bounds a client trickling its headers.
        await runtime.serve(settings.gateway_port, app, keepalive_timeout=settings.header_timeout_s)

    async def stop(self) -> None:
        """No new connections; the calls in progress get the shutdown grace, then the streams still
        running are cut and billed for what their clients got. Every call's usage is stored first."""
        await self.runtime.stop_listening()
        await self.api.drain(self.settings.shutdown_grace_s)
        await self.runtime.stop_serving()
        await self.recorder.flush(self.settings.usage_store_timeout_s)  # the queued design's backlog
        await self.runtime.close()
        await self.session.close()
