"""The one sequence barrier on quota (libs/eventlog/barrier.py) against a real nats-server and
Postgres, with quota running in this process: a caller that published an event waits until quota's
projection has passed that event's stream sequence, and then quota shows it at once (no polling on
what quota shows: the top-up's balance, the plan). A projection behind on the event's partition
keeps the caller waiting, whatever the other partitions applied; past its timeout it says so."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from libs.connections import connect_nats
from libs.eventlog.barrier import position_of, until_applied, until_quota_applied
from libs.eventlog.publisher import EventPublisher
from libs.rpc import ask
from libs.settings import Settings
from proto.v1 import AccountCreated, BalanceToppedUp, PlanChanged, QuotaStatusRequest, rpc
from services.quota.app import QuotaService

pytestmark = pytest.mark.connected


@pytest.fixture(scope="module")
async def quota(settings: Settings) -> AsyncIterator[QuotaService]:
    service = QuotaService(settings)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Client]:
    nc = await connect_nats(settings.nats_url, "test")
    yield nc
    await nc.close()


async def test_quota_shows_a_published_event_once_the_barrier_passes(
    quota: QuotaService, client: Client, settings: Settings
) -> None:
    publisher = EventPublisher(client, settings.stream)
    await publisher.start()
    account, now = f"acc_{uuid.uuid4().hex[:8]}", datetime.now(UTC)
    acks = await publisher.publish([
        AccountCreated(event_id=uuid.uuid4().hex, account_id=account, occurred_at=now, name="x"),
        BalanceToppedUp(event_id=uuid.uuid4().hex, account_id=account, occurred_at=now, amount_micros=2_500_000,
                        topup_ref="t1"),
        PlanChanged(event_id=uuid.uuid4().hex, account_id=account, occurred_at=now, plan="pro", previous_plan="free",
                    period_anchor=now, reason="payment", paid_until=now + timedelta(days=30)),
    ])  # fmt: skip
    seq = acks[-1].seq
    assert await until_quota_applied(client, settings.stream, seq, account, timeout_s=10, request_timeout_s=2)
    status = await ask(client, rpc.QUOTA_STATUS, QuotaStatusRequest(account_id=account))
    assert (status.known, status.balance_micros, status.plan) == (True, 2_500_000, "pro")
    position = await position_of(client.jetstream(), settings.stream, seq)
    assert status.applied[position.partition] >= seq


async def test_the_barrier_waits_for_the_events_partition_only(client: Client, settings: Settings) -> None:
    publisher = EventPublisher(client, settings.stream)
    await publisher.start()
    account = f"acc_{uuid.uuid4().hex[:8]}"
    [ack] = await publisher.publish(
        [AccountCreated(event_id=uuid.uuid4().hex, account_id=account, occurred_at=datetime.now(UTC), name="x")]
    )
    js, partition = client.jetstream(), (await position_of(client.jetstream(), settings.stream, ack.seq)).partition
    applied = {p: ack.seq + 100 for p in range(settings.partitions) if p != partition}  # the others are past it
    applied[partition] = ack.seq - 1

    async def read() -> dict[int, int]:
        return applied

    assert not await until_applied(js, settings.stream, ack.seq, read, 0.2)  # one short on its partition
    waiting = asyncio.create_task(until_applied(js, settings.stream, ack.seq, read, 10))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    applied[partition] = ack.seq
    assert await asyncio.wait_for(waiting, 2)
    assert await until_applied(js, settings.stream, 0, read, 0)  # a duplicate stored nothing: no wait
