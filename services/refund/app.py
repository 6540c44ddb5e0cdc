"""refund's composition root."""

from pathlib import Path

from libs.clock import Clock, SystemClock
from libs.runtime import Runtime
from libs.settings import RefundSettings
from proto.v1 import subjects
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
        queries = (subjects.REFUND_PREVIEW, subjects.REFUND_REQUEST, subjects.REFUND_GET, subjects.REFUND_LIST,
                   subjects.REFUND_CANCEL)  # fmt: skip
        for subject in queries:
            await runtime.answer(subject, self.responder.on_query)
        await runtime.nc.subscribe(subjects.REFUND_PAYOUTS, cb=self.responder.on_configure)  # every instance
        await self.desk.resume()
        await runtime.serve(settings.refund_port)

    async def stop(self) -> None:
        await self.runtime.stop_serving()
        await self.responder.close()
        await self.desk.close()
        await self.runtime.close()
