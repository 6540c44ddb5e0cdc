"""billing's composition root.

Any number of instances may run. The projection (money events, subscriptions, and the costs and
abuse evidence of every usage event: its per-call work) is split over them by partition leases
`owner.billing.<partition>` (libs/eventlog/partitioned.py), rebalanced when one joins or leaves.
One at a time (the holder of the lease owner.billing-leader.0, libs/leader.py) answers the queries
and decides payments and top-ups, one per account at a time as before, and sweeps the insiders'
ends; the others stand by and take over within seconds. A command waits until the projection, by
whichever instance, has applied the account's events (the checkpoints in Postgres:
libs/eventlog/barrier.py). A command retried across the fail-over is one payment: event ids derive
from payment_ref / topup_ref."""

import asyncio
from pathlib import Path

from libs.clock import Clock, SystemClock
from libs.leader import lead, leader_leases, until_leading
from libs.leases import PARTITION_LEASE_S
from libs.pricing.catalog import load_catalog
from libs.pricing.money import to_micros
from libs.rpc import ask
from libs.runtime import Runtime
from libs.settings_views import BillingSettings
from proto.v1 import QuotaStatusRequest, rpc
from services.billing.commands import BillingCommands
from services.billing.projection import BillingProjection
from services.billing.responder import BillingResponder

MIGRATIONS = Path(__file__).parent / "migrations"


class BillingService:
    def __init__(self, settings: BillingSettings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.runtime = Runtime("billing", settings)

    async def start(self) -> None:
        runtime, settings = self.runtime, self.settings
        await runtime.connect(MIGRATIONS)
        projection = BillingProjection()
        catalog = load_catalog(settings.catalog_path, settings.plans_path)
        weekly_caps = {plan.id: plan.limits_micros[1] for plan in catalog.plans.values()}
        responder = BillingResponder(runtime.db, projection.schema, self._balance_of, weekly_caps, self.clock)
        self.commands = BillingCommands(
            runtime.db, projection.schema, runtime.nc.jetstream(), await runtime.publisher(),
            {plan.id: to_micros(plan.price_usd) for plan in catalog.plans.values()}, self.clock,
            stream=settings.stream, barrier_wait_s=settings.billing_barrier_wait_s, sweep_s=settings.insider_sweep_s,
        )  # fmt: skip
        projecting = await runtime.project_partitioned(projection)
        self.leases = leader_leases(await runtime.lease_thread(), "billing")
        await self.leases.start()
        leading = asyncio.Event()
        runtime.spawn(lead(self.leases, lambda: self._begin(responder), leading), "billing-leader")
        await until_leading(leading)
        await projecting.until_settled(PARTITION_LEASE_S * 4 / 3)
        await runtime.serve(settings.billing_port)

    async def _begin(self, responder: BillingResponder) -> None:
        """Leading: answer the queries and commands, sweep the insiders' ends."""
        responder.serve(self.runtime)
        self.commands.serve(self.runtime)
        await self.runtime.start_responders()
        self.runtime.spawn(self.commands.sweep_insiders(), "billing-insider-sweep")

    async def _balance_of(self, account_id: str) -> int:
        """The PAYG balance from its owner, quota (billing keeps no ledger of its own)."""
        status = await ask(self.runtime.nc, rpc.QUOTA_STATUS, QuotaStatusRequest(account_id=account_id),
                           self.settings.request_timeout_s)  # fmt: skip
        return status.balance_micros

    async def stop(self) -> None:
        await self.runtime.stop_serving()
        await self.leases.stop(release=True)
        await self.runtime.close()
