"""refund's composition root."""

from pathlib import Path

from libs.clock import Clock, SystemClock
from libs.runtime import Runtime
from libs.settings import RefundSettings
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
        await runtime.project(projection)
        publisher = await runtime.publisher()
        provider = LocalPaymentProvider(runtime.db, publisher, projection.schema)
        self.desk = RefundDesk(
            runtime.db, projection.schema, runtime.nc, publisher, provider, self.clock, stream=settings.stream,
            request_timeout_s=settings.request_timeout_s, barrier_wait_s=settings.refund_barrier_wait_s,
        )  # fmt: skip
        self.responder = RefundResponder(self.desk, provider)
        self.responder.serve(runtime)
        await runtime.start_responders()
        await self.desk.resume()
        await runtime.serve(settings.refund_port)

    async def stop(self) -> None:
        await self.runtime.stop_serving()
        await self.desk.close()
        await self.runtime.close()
