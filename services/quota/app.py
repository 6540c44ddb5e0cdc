"""quota's composition root: wires settings, clock, Postgres, NATS, projection and responder.

Any number of instances may run: each owns some partitions of the event log through leases
(services/quota/partitions.py) and projects and admits for those only."""

import logging
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from libs import tracing
from libs.clock import Clock, SystemClock
from libs.pricing.catalog import load_catalog
from libs.runtime import Runtime
from libs.settings_views import QuotaSettings
from proto.v1 import rpc, subjects
from services.quota.domain.admission import Limits
from services.quota.inflight import InflightTracker
from services.quota.partitions import LEASE_S, FlowRates, QuotaPartitions
from services.quota.projection import QuotaProjection
from services.quota.responder import QuotaResponder
from services.quota.state import QuotaState

MIGRATIONS = Path(__file__).parent / "migrations"
YOUNG_COLLECTION_EVERY = 700
"""Python's default, not the 50,000 the other services collect their youngest generation at
(libs/service.py). A young collection walks every young object still alive and frees the cyclic
garbage among them: in quota, what the projection's idle fetches leave (a timed-out wait's
traceback is a cycle) and the reservations of calls in flight. At 50,000 that stopped quota's loop
for 10-17 ms of CPU two or three times a minute at 5,000 checks/s; at 700 the longest pause was
7.5 ms and most took under 1 ms, for about 1.3 ms of collection CPU a second (docs/performance.md,
task q5k). quota.check's p99 target is 2 ms."""
log = logging.getLogger(__name__)


class QuotaService:
    def __init__(self, settings: QuotaSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.catalog = load_catalog(settings.catalog_path, settings.plans_path)
        self.state = QuotaState(self.catalog.default_usd_per_flow, self.catalog.insider_multiplier, self.clock)
        self.runtime = Runtime("quota", settings)

    async def start(self) -> None:
        runtime, settings = self.runtime, self.settings
        await runtime.connect(MIGRATIONS)
        projection = QuotaProjection(self.state, partitions=settings.partitions)
        tracker = InflightTracker(self.state, settings, self.clock, runtime.nc, runtime.db, projection.schema)
        await tracker.listen()  # first: the heartbeats heard from here on rebuild the calls in flight
        async with runtime.db.acquire() as conn:
            await fill_partitions(conn, projection.schema, settings.partitions)
            await self.state.load(conn, projection.schema)
        await FlowRates(runtime.nc.jetstream(), settings.stream, self.state).start()
        leases = (await runtime.lease_thread()).leases("quota", settings.partitions, lease_s=LEASE_S, hand_over=True)
        # Each partition is projected under its own lease: its revision fences a stale owner's commits;
        # a replay pauses every instance.
        runner = await runtime.project(projection, every_partition=False, peers=leases, fence=leases.revision)
        limits = {plan.id: Limits(*plan.limits_micros) for plan in self.catalog.plans.values()}
        await store_limits(runtime.db, projection.schema, limits)
        partitions = QuotaPartitions(
            runtime.nc, leases, runner, self.state, runtime.db, projection.schema, stream=settings.stream,
            heartbeat_interval_s=settings.heartbeat_interval_s, listening_since=tracker.listening_since,
        )  # fmt: skip
        self.partitions = partitions
        projection.reloaded = partitions.projecting  # after a replay's swap: what this instance projects
        tracker.ready_for, tracker.copying = partitions.ready_for, partitions.copying
        responder = QuotaResponder(
            self.state, self.catalog, limits, self.clock, runtime.db, projection.schema, runtime.nc,
            partitions.ready_for, partitions.partition_of, runner.applied, runtime.tracer,
        )  # fmt: skip
        for subject, handler in (
            (subjects.QUOTA_CHECK, responder.on_check),
            (subjects.QUOTA_RELEASE, responder.on_release),
        ):
            await runtime.answer(subject, handler)
        runtime.reply(rpc.QUOTA_STATUS, responder.status_of)
        runtime.reply(rpc.QUOTA_EVENTS, responder.events)
        runtime.reply(rpc.QUOTA_INFLIGHT, responder.inflight, max_workers=16)  # each waits until quota is ready
        await runtime.start_responders()  # status and events are answered while in-flight state rebuilds
        await leases.start()
        owned = {
            subjects.QUOTA_CHECK: responder.on_owned_check,
            subjects.QUOTA_RELEASE: responder.on_owned_release,
            subjects.QUOTA_STATUS: responder.on_owned_status,
            subjects.QUOTA_INFLIGHT: responder.on_owned_inflight,
            subjects.QUOTA_CHECK_BATCH: responder.on_owned_check_batch,
        }
        assert owned.keys() == set(subjects.PARTITIONED), "the contract (proto/asyncapi.json) lists what owners answer"
        traced = {subject: tracing.answering(runtime.tracer, subject, handler) for subject, handler in owned.items()}
        runtime.spawn(partitions.run(traced), "quota-partitions")
        runtime.spawn(tracker.run(), "quota-inflight")
        await partitions.until_settled()  # healthy (and listening) once it admits for its share
        await runtime.serve(settings.quota_port)

    async def stop(self) -> None:
        if hasattr(self, "partitions"):
            await self.partitions.stop()
        await self.runtime.close()


async def fill_partitions(conn: asyncpg.Connection, schema: str, partitions: int) -> None:
    """Each account's partition, for the accounts projected before the column was (the projection
    fills it since): once, at the first start after the migration; a no-op after."""
    filled = await conn.execute(
        f"UPDATE {schema}.accounts SET partition = quota.partition_for(account_id, $1) WHERE partition IS NULL",
        partitions,
    )
    if filled != "UPDATE 0":
        log.info("quota: the partition of %s accounts filled in", filled.split()[-1])


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
