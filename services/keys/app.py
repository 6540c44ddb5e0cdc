"""keys' composition root.

Any number of instances may run. key.lookup is by key, not by account, and keys are few and small:
every instance keeps all of them in memory, following the key events of the log
(libs/eventlog/follower.py), and answers lookups in a queue group, so lookups need no owner and
survive the loss of any instance with no gap. The projection to Postgres (keys, suspensions, and
the last use of each key from every usage event: its per-call work) is split over the instances by
partition leases `owner.keys.<partition>` (libs/eventlog/partitioned.py), rebalanced when one joins
or leaves. One instance at a time, the holder of the lease `owner.keys-leader.0` (libs/leader.py),
answers the key commands (create, rotate, revoke, suspend: decided from its memory, one at a time);
another takes over within seconds when it dies. An instance that loses the leader lease while
running exits (crash-only: its supervisor starts it again as a standby), so two never decide at
once."""

import asyncio
from pathlib import Path

from libs.clock import Clock, SystemClock
from libs.eventlog.follower import LogFollower, loaded_from
from libs.leader import lead, leader_leases, until_leading
from libs.leases import PARTITION_LEASE_S, PartitionLeases
from libs.runtime import Runtime
from libs.settings_views import KeysSettings
from proto.v1 import subjects
from proto.v1.events import AnyEvent
from services.keys.domain import AccessEvent, KeyEvent
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.keys.responder import KeysResponder

MIGRATIONS = Path(__file__).parent / "migrations"


class KeysService:
    def __init__(self, settings: KeysSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.registry = KeyRegistry()
        self.runtime = Runtime("keys", settings)
        self.leases: PartitionLeases | None = None

    async def start(self) -> None:
        runtime, settings = self.runtime, self.settings
        await runtime.connect(MIGRATIONS)
        projection = KeysProjection(self.registry)
        async with runtime.db.acquire() as conn:
            loaded = await loaded_from(conn, projection.schema, projection.name, settings.partitions)
            await self.registry.load(conn, projection.schema)
        follower = LogFollower(runtime.nc.jetstream(), settings.stream, projection.event_types, self._apply)
        await follower.start(loaded)
        self.leases = leader_leases(await runtime.lease_thread(), "keys")
        await self.leases.start()
        responder = KeysResponder(
            self.registry, await runtime.publisher(), runtime.nc, self.clock, follower, self.leases,
            (runtime.db, projection.schema),
        )  # fmt: skip
        await responder.follow_changes()
        await runtime.answer(subjects.KEY_LOOKUP, responder.on_lookup)
        projecting = await runtime.project_partitioned(projection)
        leading = asyncio.Event()
        runtime.spawn(lead(self.leases, lambda: self._begin(responder), leading), "keys-leader")
        await until_leading(leading)
        await projecting.until_settled(PARTITION_LEASE_S * 4 / 3)
        await runtime.serve(settings.keys_port)

    def _apply(self, event: AnyEvent) -> None:
        if isinstance(event, KeyEvent):
            self.registry.apply(event)
        elif isinstance(event, AccessEvent):
            self.registry.apply_access(event)

    async def _begin(self, responder: KeysResponder) -> None:
        """Leading: answer the key commands."""
        responder.serve(self.runtime)
        await self.runtime.start_responders()

    async def stop(self) -> None:
        if self.leases is not None:
            await self.runtime.stop_serving()
            await self.leases.stop(release=True)
        await self.runtime.close()
