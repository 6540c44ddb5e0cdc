"""Metering clients' usage in (POST /v1/usage) and the public catalog (plans, models)."""

import time
from datetime import timedelta

from aiohttp import web

from libs.db import UNAVAILABLE
from libs.web import ApiError, json_response
from services.ingress import metrics, openapi, views
from services.ingress.routes.edge import Edge
from services.ingress.usage import claim, client_of, decode_batch, price_batch


class MeteringRoutes(Edge):
    async def post_usage(self, request: web.Request) -> web.Response:
        try:
            return await self._accept_usage(request)
        except ApiError as exc:
            metrics.usage_rejected.add(1, {"status": str(exc.status)})
            raise
        except web.HTTPRequestEntityTooLarge:
            metrics.usage_rejected.add(1, {"status": "413"})
            raise

    async def _accept_usage(self, request: web.Request) -> web.Response:
        client = client_of(self._bearer(request), self._ingest_clients)
        if client is None:
            raise ApiError(401, "unauthorized", "wrong token", "Authorization")
        records = decode_batch(await request.read(), self.settings.max_usage_batch)
        await self.directory.synced()  # several instances: what another one changed, this one knows
        events = price_batch(
            records,
            self.catalog,
            self.directory,
            self.clock.now(),
            timedelta(seconds=self.settings.accepted_lateness_s),
            timedelta(seconds=self.settings.accepted_lead_s),
            client,
        )
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                # Claim the ids; the claim commits only once JetStream has stored the events,
                # so a failed publish leaves nothing claimed and the client's retry goes through.
                fresh = await claim(conn, events, client)
                await self._publish(fresh)
        except UNAVAILABLE as exc:
            raise ApiError(503, "database_unavailable", "the database is not reachable; retry") from exc
        metrics.publish_seconds.record(time.perf_counter() - started)
        metrics.usage_events.add(len(fresh), {"outcome": "accepted"})
        metrics.usage_events.add(len(events) - len(fresh), {"outcome": "duplicate"})
        return json_response({"accepted": len(fresh), "duplicates": len(events) - len(fresh)}, 202)

    async def get_plans(self, _: web.Request) -> web.Response:
        return json_response(views.plans(self.catalog, self.directory.flow_rate.at(self.clock.now())))

    async def get_models(self, _: web.Request) -> web.Response:
        return json_response(views.models(self.catalog))

    async def get_openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=request.app[openapi.DOCUMENT], content_type="application/json")
