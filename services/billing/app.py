"""billing's composition root."""

from pathlib import Path

from libs.clock import Clock, SystemClock
from libs.pricing.catalog import load_catalog
from libs.pricing.money import to_micros
from libs.rpc import ask
from libs.runtime import Runtime
from libs.settings import BillingSettings
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
        await runtime.project(projection)
        catalog = load_catalog(settings.catalog_path, settings.plans_path)
        weekly_caps = {plan.id: plan.limits_micros[1] for plan in catalog.plans.values()}
        responder = BillingResponder(runtime.db, projection.schema, self._balance_of, weekly_caps, self.clock)
        responder.serve(runtime)
        self.commands = BillingCommands(
            runtime.db, projection.schema, runtime.nc.jetstream(), await runtime.publisher(),
            {plan.id: to_micros(plan.price_usd) for plan in catalog.plans.values()}, self.clock,
            stream=settings.stream, barrier_wait_s=settings.billing_barrier_wait_s, sweep_s=settings.insider_sweep_s,
        )  # fmt: skip
        self.commands.serve(runtime)
        runtime.spawn(self.commands.sweep_insiders(), "billing-insider-sweep")
        await runtime.serve(settings.billing_port)

    async def _balance_of(self, account_id: str) -> int:
        """The PAYG balance from its owner, quota (billing keeps no ledger of its own)."""
        status = await ask(self.runtime.nc, rpc.QUOTA_STATUS, QuotaStatusRequest(account_id=account_id),
                           self.settings.request_timeout_s)  # fmt: skip
        return status.balance_micros

    async def stop(self) -> None:
        await self.runtime.stop_serving()
        await self.runtime.close()
