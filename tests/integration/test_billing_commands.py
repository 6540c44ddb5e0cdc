"""billing's commands decide only once its projection has caught up with the account: while it
lags, a payment is refused (retry) and nothing is recorded, rather than decided from an older plan."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import nats
import pytest

from libs.clock import SystemClock
from libs.eventlog.publisher import EventPublisher
from libs.eventlog.runner import ProjectionRunner
from libs.pricing.money import to_micros
from libs.settings import Settings
from proto.v1 import AccountCreated, PaymentAccepted, RecordPayment
from services.billing.commands import BillingCommands, Unavailable
from services.billing.projection import BillingProjection

pytestmark = pytest.mark.connected
PRICES = {"free": 0, "pro": to_micros("20"), "max": to_micros("100")}


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[BillingCommands, ProjectionRunner, EventPublisher]]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    nc = await nats.connect(settings.nats_url)
    publisher = EventPublisher(nc, settings.stream)
    await publisher.start()
    commands = BillingCommands(
        pool, "billing", nc.jetstream(), publisher, PRICES, SystemClock(), stream=settings.stream, barrier_wait_s=0.3
    )
    runner = ProjectionRunner(
        BillingProjection(), pool, nc.jetstream(), stream=settings.stream, partitions=settings.partitions
    )
    try:
        yield commands, runner, publisher
    finally:
        await nc.close()
        await pool.close()


async def test_a_payment_waits_for_the_projection_and_is_refused_while_it_lags(
    parts: tuple[BillingCommands, ProjectionRunner, EventPublisher], settings: Settings
) -> None:
    commands, runner, publisher = parts
    account_id = f"acc_{uuid.uuid4().hex[:16]}"
    await publisher.publish([AccountCreated(
        event_id=str(uuid.uuid4()), account_id=account_id, occurred_at=datetime.now(UTC), name="lagging",
    )])  # fmt: skip
    first = RecordPayment(account_id=account_id, plan="max", amount_micros=PRICES["max"], payment_ref="p1")
    second = RecordPayment(account_id=account_id, plan="pro", amount_micros=PRICES["pro"], payment_ref="p2")

    with pytest.raises(Unavailable):  # no projection runs: the account's events are not applied
        await commands.handle(first)
    nc = await nats.connect(settings.nats_url)
    try:
        info = await nc.jetstream().stream_info(settings.stream)
        assert info.state.messages == 1  # nothing recorded
    finally:
        await nc.close()

    projecting = asyncio.create_task(runner.run())
    try:
        paid = await commands.handle(first)
        downgrade = await commands.handle(second)  # right after: sees the Max month it must wait for
        again = await commands.handle(first)
        applied = max(runner.applied.values())  # the barrier of `second` waited for `paid` to be applied
    finally:
        projecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await projecting
    assert isinstance(paid, PaymentAccepted) and isinstance(downgrade, PaymentAccepted)
    assert paid.previous_plan == "free"
    assert (downgrade.previous_plan, downgrade.effective_at) == ("max", paid.paid_until)
    # what a caller waits on quota for: the stream sequence of the last event stored (1 is the
    # AccountCreated; a payment stores PaymentRecorded and PlanChanged), none for a duplicate
    assert (paid.seq, downgrade.seq) == (3, 5)
    assert isinstance(again, PaymentAccepted) and (again.duplicate, again.seq) == (True, 0)
    assert applied >= paid.seq
