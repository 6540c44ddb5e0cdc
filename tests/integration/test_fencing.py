"""Fencing stale projection writers by the lease's revision (libs/eventlog/runner.py, "Fencing";
docs/scaling.md) on a real nats-server and Postgres: two runners of one partition of a projection,
each under its own holder of one lease. The first is frozen in the middle of a batch (its apply
held) for longer than its lease; the second takes the lease and the partition over and projects;
then the first wakes up and tries to commit its batch: the batch must not be committed, and the
first runner stops the partition rather than retry it.

The refund desk's own writes (outside its projection) are fenced the same way by the leader lease's
revision (libs/fencing.py): a desk whose leader lost the lead decides nothing once the next stamped."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import nats
import pytest
from nats.aio.client import Client

from libs.clock import SystemClock
from libs.eventlog.projection import AfterCommit, Applied
from libs.eventlog.publisher import EventPublisher
from libs.eventlog.runner import ProjectionRunner
from libs.eventlog.subjects import STORED_PREFIX, partition_for, publish_subject
from libs.fencing import Fenced, LeaderFence
from libs.leader import leader_fence
from libs.leases import PartitionLeases, held
from libs.settings import Settings
from proto.v1 import RefundRequested, UsageRecorded, encode
from services.refund.desk import RefundDesk
from services.refund.projection import insert_refund
from services.refund.provider import LocalPaymentProvider

pytestmark = pytest.mark.connected
LEASE_S = 1.5


class FreezableProbe:
    """A projection writing one row per event (its event id unique, as the real projections' are),
    that can be frozen inside its transaction after writing, as a paused process would be."""

    name, schema, category = "fence_probe", "refund", "usage"
    event_types = ("UsageRecorded",)

    def __init__(self, writer: str) -> None:
        self.writer = writer
        self.frozen = False
        self.entered, self.thaw = asyncio.Event(), asyncio.Event()

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        await conn.executemany(
            "INSERT INTO fence_probe (event_id, seq, writer) VALUES ($1, $2, $3)",
            [(item.event.event_id, item.seq, self.writer) for item in batch],
        )
        if self.frozen:
            self.entered.set()
            await self.thaw.wait()
        return None


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=6)
    await pool.execute(
        "CREATE TABLE IF NOT EXISTS fence_probe (event_id text PRIMARY KEY, seq bigint NOT NULL, writer text NOT NULL)"
    )
    yield pool
    await pool.close()


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[Client]:
    client = await nats.connect(settings.nats_url)
    yield client
    await client.close()


async def until(condition: Callable[[], Awaitable[object]], within: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_writer_frozen_past_its_lease_does_not_commit_after_the_new_owner_took_over(
    settings: Settings, pool: asyncpg.Pool, nc: Client
) -> None:
    js = nc.jetstream()
    account = f"acc_{uuid.uuid4().hex[:12]}"
    partition = partition_for(account, settings.partitions)

    async def publish() -> tuple[str, int]:
        event = UsageRecorded(
            event_id=uuid.uuid4().hex, account_id=account, occurred_at=datetime.now(UTC),
            model="deepseek/deepseek-chat", input_tokens=10, output_tokens=10, billing_mode="subscription",
            usd_cost_micros=10, flows_micros=20_000, usd_per_flow="5/198", multiplier="1",
        )  # fmt: skip
        ack = await js.publish(publish_subject("usage", account, "UsageRecorded"), encode(event))
        return event.event_id, ack.seq

    async def checkpoint() -> asyncpg.Record:
        return await pool.fetchrow(
            "SELECT last_seq, fence FROM refund.checkpoints WHERE projection = 'fence_probe' AND partition = $1",
            partition,
        )

    async def writers(event_id: str) -> list[str]:
        return [r["writer"] for r in await pool.fetch("SELECT writer FROM fence_probe WHERE event_id = $1", event_id)]

    def runner(probe: FreezableProbe, leases: PartitionLeases) -> ProjectionRunner:
        return ProjectionRunner(probe, pool, js, stream=settings.stream, partitions=settings.partitions,
                                fence=leader_fence(leases))  # fmt: skip

    leases_a = PartitionLeases(js, "fence-probe", "a", 1, lease_s=LEASE_S, rebalance=False)
    leases_b = PartitionLeases(js, "fence-probe", "b", 1, lease_s=LEASE_S, rebalance=False)
    await leases_a.start()
    await leases_b.start()
    probe_a, probe_b = FreezableProbe("a"), FreezableProbe("b")
    runner_a, runner_b = runner(probe_a, leases_a), runner(probe_b, leases_b)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:
        await asyncio.wait_for(held(leases_a, True, every_s=0.05), 5)
        tasks.append(asyncio.create_task(runner_a.run_partition(partition, stop_a)))
        first, _ = await publish()
        await until(lambda: writers(first), 10, "the first owner projects")
        fence_a = leases_a.revision(0)
        assert fence_a is not None and (await checkpoint())["fence"] == fence_a

        probe_a.frozen = True  # A freezes in the middle of its next batch, and its renewals with it
        second, second_seq = await publish()
        await asyncio.wait_for(probe_a.entered.wait(), 10)
        await leases_a.stop(release=False)

        await asyncio.wait_for(held(leases_b, True, every_s=0.05), LEASE_S * 4)
        fence_b = leases_b.revision(0)
        assert fence_b is not None and fence_b > fence_a
        tasks.append(asyncio.create_task(runner_b.run_partition(partition, stop_b)))

        async def stamped_by_b() -> bool:  # not held up by A's open transaction
            return bool((await checkpoint())["fence"] == fence_b)

        await until(stamped_by_b, 10, "the new owner stamps its fence while the old one is frozen")

        probe_a.thaw.set()  # A wakes up and commits its batch: refused
        await asyncio.wait_for(tasks[0], 10)  # and it stops the partition rather than retry
        assert partition in runner_a.fenced

        await until(lambda: writers(second), 10, "the new owner projects the batch the old one held")
        assert await writers(first) == ["a"]
        assert await writers(second) == ["b"]  # without the fence: "a", and B's insert fails
        assert dict(await checkpoint()) == {"last_seq": second_seq, "fence": fence_b}
        third, third_seq = await publish()
        await until(lambda: writers(third), 10, "the new owner goes on")
        assert not runner_b.fenced

        # A writer that starts with a token older than the one stored stops before reading anything.
        late = ProjectionRunner(FreezableProbe("late"), pool, js, stream=settings.stream,
                                partitions=settings.partitions, fence=lambda _: fence_a)  # fmt: skip
        await asyncio.wait_for(late.run_partition(partition, asyncio.Event()), 10)
        assert late.fenced == {partition}
        assert dict(await checkpoint()) == {"last_seq": third_seq, "fence": fence_b}
    finally:
        stop_a.set()
        stop_b.set()
        probe_a.thaw.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await leases_b.stop()


async def test_a_refund_desk_whose_leader_lost_the_lead_decides_nothing(
    settings: Settings, pool: asyncpg.Pool, nc: Client
) -> None:
    publisher = EventPublisher(nc, settings.stream)
    await publisher.start()
    old, new = LeaderFence("refund", "refund-desk"), LeaderFence("refund", "refund-desk")

    def desk(fence: LeaderFence) -> RefundDesk:
        provider = LocalPaymentProvider(pool, publisher, "refund")
        return RefundDesk(pool, "refund", nc, publisher, provider, SystemClock(), fence, stream=settings.stream,
                          request_timeout_s=2.0, barrier_wait_s=2.0)  # fmt: skip

    account, refund_id, now = f"acc_{uuid.uuid4().hex[:12]}", f"rf_{uuid.uuid4().hex[:24]}", datetime.now(UTC)
    requested = RefundRequested(
        event_id=uuid.uuid4().hex, account_id=account, occurred_at=now, refund_id=refund_id, payment_ref="pay_1",
        plan="pro", paid_at=now, paid_micros=20_000_000, cutoff_seq=0, usage_micros=0, refunded_before_micros=0,
        fee_micros=1_000_000, amount_micros=19_000_000,
    )  # fmt: skip
    async with pool.acquire() as conn:
        await insert_refund(conn, "refund", requested)

    async def cancels_published() -> int:
        info = await nc.jetstream().stream_info(
            settings.stream, subjects_filter=f"{STORED_PREFIX}.*.*.{account}.RefundCancelled"
        )
        return sum((info.state.subjects or {}).values())

    await old.stamp(pool, 10)
    async with pool.acquire() as conn, conn.transaction():  # the old leader in the middle of a decision
        await old.check(conn)
        stamping = asyncio.create_task(new.stamp(pool, 12))
        await asyncio.sleep(0.3)
        assert not stamping.done()  # the new leader's stamp waits for the decision under way
    await asyncio.wait_for(stamping, 5)  # and comes after it

    with pytest.raises(Fenced):  # the old leader, frozen until now, cancels the refund: refused
        await desk(old).cancel(account, refund_id)
    status = await pool.fetchval("SELECT status FROM refund.refunds WHERE refund_id = $1", refund_id)
    assert status == "processing" and await cancels_published() == 0  # without the fence: cancelled, published
    with pytest.raises(Fenced):  # nor can it lead again with its old token
        await old.stamp(pool, 11)

    assert (await desk(new).cancel(account, refund_id)).status == "cancelled"
    assert await cancels_published() == 1
