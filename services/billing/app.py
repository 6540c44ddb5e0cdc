"""billing's composition root."""

from pathlib import Path

from libs.runtime import Runtime
from libs.settings import Settings
from proto.v1 import subjects
from services.billing.projection import BillingProjection
from services.billing.responder import BillingResponder

MIGRATIONS = Path(__file__).parent / "migrations"


class BillingService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime = Runtime("billing", settings)

    async def start(self) -> None:
        runtime = self.runtime
        await runtime.connect(MIGRATIONS)
        projection = BillingProjection()
        await runtime.project(projection)
        responder = BillingResponder(runtime.db, projection.schema)
        await runtime.answer(subjects.BILLING_HISTORY, responder.on_history)
        await runtime.answer(subjects.BILLING_COSTS, responder.on_costs)
        await runtime.serve(self.settings.billing_port)

    async def stop(self) -> None:
        await self.runtime.close()
