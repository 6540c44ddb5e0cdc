"""refund's composition root.

Any number of instances may run. The projection (payments, plan changes and usage: what a refund is
computed from) is split over them by partition leases `owner.refund.<partition>`
(libs/eventlog/partitioned.py), rebalanced when one joins or leaves. One at a time (the holder of
the lease owner.refund-leader.0, libs/leader.py) answers the refund commands and settles, the
others stand by; the desk waits until the projection, by whichever instance, has applied the
account's events (the checkpoints in Postgres: libs/eventlog/barrier.py). A leader killed
mid-settlement: the next one resumes every refund still processing, and the payout carries the
refund id as the provider's idempotency key, so nothing is paid twice."""

import asyncio
from pathlib import Path

from libs.clock import Clock, SystemClock
from libs.fencing import LeaderFence
from libs.leader import lead, leader_leases, until_leading
from libs.leases import PARTITION_LEASE_S
from libs.runtime import Runtime
from libs.settings_views import RefundSettings
from services.refund.desk import RefundDesk
from services.refund.projection import RefundProjection
from services.refund.provider import LocalPaymentProvider
from services.refund.responder import RefundResponder

MIGRATIONS = Path(__file__).parent / "migrations"


class RefundService:
    def __init__(self, settings: RefundSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.runtime = Runtime("refund", settings)

    async def start(self) -> None:
        runtime, settings = self.runtime, self.settings
        await runtime.connect(MIGRATIONS)
        projection = RefundProjection()
        publisher = await runtime.publisher()
        provider = LocalPaymentProvider(runtime.db, publisher, projection.schema)
        self.fence = LeaderFence(projection.schema, "refund-desk")
        self.desk = RefundDesk(
            runtime.db, projection.schema, runtime.nc, publisher, provider, self.clock, self.fence,
            stream=settings.stream,
            request_timeout_s=settings.request_timeout_s, barrier_wait_s=settings.refund_barrier_wait_s,
        )  # fmt: skip
        self.responder = RefundResponder(self.desk, provider)
        projecting = await runtime.project_partitioned(projection)
        self.leases = leader_leases(await runtime.lease_thread(), "refund")
        await self.leases.start()
        leading = asyncio.Event()
        runtime.spawn(lead(self.leases, self._begin, leading), "refund-leader")
        await until_leading(leading)
        await projecting.until_settled(PARTITION_LEASE_S * 4 / 3)
        await runtime.serve(settings.refund_port)

    async def _begin(self) -> None:
        """Leading: decide from now on (the desk's fence stamped: a previous leader, frozen, decides
        nothing more), answer the commands, settle what the previous leader left processing."""
        token = self.leases.revision(0)
        assert token is not None, "leading without the lease"
        await self.fence.stamp(self.runtime.db, token)
        self.responder.serve(self.runtime)
        await self.runtime.start_responders()
        await self.desk.resume()

    async def stop(self) -> None:
        await self.runtime.stop_serving()
        await self.desk.close()
        await self.leases.stop(release=True)
        await self.runtime.close()
