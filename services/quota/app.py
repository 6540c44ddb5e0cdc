"""quota's composition root: wires settings, clock, Postgres, NATS, projection and responder."""

from collections.abc import Mapping
from pathlib import Path

import asyncpg

from libs.clock import Clock, SystemClock
from libs.pricing.catalog import load_catalog
from libs.runtime import Runtime
from libs.settings import QuotaSettings
from proto.v1 import rpc, subjects
from services.quota.domain.admission import Limits
from services.quota.inflight import InflightTracker
from services.quota.projection import QuotaProjection
from services.quota.responder import QuotaResponder
from services.quota.state import QuotaState

MIGRATIONS = Path(__file__).parent / "migrations"


class QuotaService:
    def __init__(self, settings: QuotaSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.catalog = load_catalog(settings.catalog_path, settings.plans_path)
        self.state = QuotaState(self.catalog.default_usd_per_flow, self.catalog.insider_multiplier, self.clock)
        self.runtime = Runtime("quota", settings)

    async def start(self) -> None:
        runtime = self.runtime
        await runtime.connect(MIGRATIONS)
        projection = QuotaProjection(self.state)
        tracker = InflightTracker(self.state, self.settings, self.clock, runtime.nc, runtime.db, projection.schema)
        await tracker.listen()  # first: the heartbeats heard from here on rebuild the calls in flight
        async with runtime.db.acquire() as conn:
            await self.state.load(conn, projection.schema)
        runner = await runtime.project(projection)
        limits = {plan.id: Limits(*plan.limits_micros) for plan in self.catalog.plans.values()}
        await store_limits(runtime.db, projection.schema, limits)
        responder = QuotaResponder(
            self.state, self.catalog, limits, self.clock, runtime.db, projection.schema, tracker.ready, runner.applied
        )
        for subject, handler in (
            (subjects.QUOTA_CHECK, responder.on_check),
            (subjects.QUOTA_RELEASE, responder.on_release),
        ):
            await runtime.answer(subject, handler)
        runtime.reply(rpc.QUOTA_STATUS, responder.status_of)
        runtime.reply(rpc.QUOTA_EVENTS, responder.events)
        runtime.reply(rpc.QUOTA_INFLIGHT, responder.inflight, max_workers=16)  # each waits until quota is ready
        await runtime.start_responders()  # status and events are answered while in-flight state rebuilds
        runtime.spawn(tracker.run(), "quota-inflight")
        await tracker.ready.wait()  # healthy (and listening) once it admits
        await runtime.serve(self.settings.quota_port)

    async def stop(self) -> None:
        await self.runtime.close()


async def store_limits(pool: asyncpg.Pool, schema: str, limits: Mapping[str, Limits]) -> None:
    """Put the caps in force in Postgres: they are configuration, not events, yet SQL over the
    windows (the dashboards' "near cap") needs them next to the usage."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"DELETE FROM {schema}.plan_limits WHERE plan <> ALL($1::text[])", list(limits))
        await conn.executemany(
            f"""INSERT INTO {schema}.plan_limits (plan, window_5h_micros, weekly_micros, monthly_micros)
                VALUES ($1, $2, $3, $4) ON CONFLICT (plan) DO UPDATE SET window_5h_micros = EXCLUDED.window_5h_micros,
                    weekly_micros = EXCLUDED.weekly_micros, monthly_micros = EXCLUDED.monthly_micros""",
            [(plan, *caps) for plan, caps in limits.items()],
        )
