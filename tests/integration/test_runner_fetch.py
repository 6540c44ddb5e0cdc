"""The projection runner's fetch against a real nats-server (issue 14: projections that keep up): a
batch already delivered to the subscription's queue is taken without a wait per message (nats-py's
own next_msg starts two tasks per message), every message in log order, and an empty consumer still
times out as before; the events' headers are not parsed unless one is read (the traceparent), while
another subscription of the connection still gets them; a trickle of events is applied several to a transaction;
an idle partition's fetches, and a batch applied, leave nothing for the garbage collector."""

import asyncio
import contextlib
import gc
import types
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import nats
import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api
from tenacity import AsyncRetrying

from libs.eventlog import delivery
from libs.eventlog.delivery import skip_unread_headers, take_queued_first
from libs.eventlog.projection import AfterCommit, Applied
from libs.eventlog.runner import ProjectionRunner
from libs.eventlog.subjects import partition_for
from libs.localservers import LocalNats
from libs.settings import Settings
from tests.integration.conftest import publish_usage

pytestmark = pytest.mark.connected


async def test_a_fetch_takes_the_queued_messages_of_a_batch_without_waiting_for_each(
    nats_server: LocalNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="RUNNER_FETCH", subjects=["runner_fetch.>"]))
    for i in range(300):
        await js.publish(f"runner_fetch.{i % 3}", str(i).encode())
    config = api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.ALL, max_ack_pending=1000)
    await js.add_consumer("RUNNER_FETCH", config=config)
    sub = await js.pull_subscribe_bind(durable="c", stream="RUNNER_FETCH")
    waits = 0
    waiting = delivery.next_message

    async def counted(inner: Subscription, timeout: float | None) -> Msg:  # noqa: ASYNC109 (next_msg's own signature)
        nonlocal waits
        waits += 1
        return await waiting(inner, timeout)

    monkeypatch.setattr(delivery, "next_message", counted)
    take_queued_first(sub)
    try:
        msgs = await sub.fetch(300, timeout=5)
        assert [int(m.data) for m in msgs] == list(range(300))
        assert 0 < waits < 100  # a wait when the queue ran dry, not one per message (300 without)
        await msgs[-1].ack()
        with pytest.raises(TimeoutError):
            await sub.fetch(10, timeout=0.5)
    finally:
        await js.delete_stream("RUNNER_FETCH")
        await nc.close()


async def test_a_runners_fetch_parses_only_the_headers_it_reads(nats_server: LocalNats) -> None:
    """Every event of the log carries a Nats-Msg-Id, which nats-py parses in Python for every message
    and the runner never reads: its subscription gets the events without parsed headers, except one
    that carries the header still read (the traceparent, when tracing). The end of a fetch, a status
    message, still ends it; another subscription of the same connection still gets every header."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name="RUNNER_HEADERS", subjects=["runner_headers.>"]))
    watched = await nc.subscribe("runner_headers.>")
    traced = {"Nats-Msg-Id": "e-1", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    for i, headers in enumerate([{"Nats-Msg-Id": "e-0"}, traced, {"Nats-Msg-Id": "e-2"}]):
        await js.publish(f"runner_headers.{i}", str(i).encode(), headers=headers)
    config = api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.ALL, max_ack_pending=1000)
    await js.add_consumer("RUNNER_HEADERS", config=config)
    sub = await js.pull_subscribe_bind(durable="c", stream="RUNNER_HEADERS")
    skip_unread_headers(sub, unless=b"traceparent")
    try:
        msgs = await sub.fetch(10, timeout=1)
        assert [int(m.data) for m in msgs] == [0, 1, 2]
        assert [m.headers for m in msgs] == [None, traced, None]
        await msgs[-1].ack()
        with pytest.raises(TimeoutError):
            await sub.fetch(10, timeout=0.5)
        seen = [(await watched.next_msg(1)).headers for _ in range(3)]
        assert seen == [{"Nats-Msg-Id": "e-0"}, traced, {"Nats-Msg-Id": "e-2"}]
    finally:
        await js.delete_stream("RUNNER_HEADERS")
        await nc.close()


class BatchProbe:
    """A projection that only notes the size of each batch the runner applies (one transaction each)."""

    name, schema, category = "linger_probe", "refund", "usage"
    event_types = ("UsageRecorded",)

    def __init__(self, expected: int) -> None:
        self.batches: list[int] = []
        self.expected, self.all_applied = expected, asyncio.Event()

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        self.batches.append(len(batch))
        if sum(self.batches) >= self.expected:
            self.all_applied.set()
        return None


@contextlib.asynccontextmanager
async def running(settings: Settings, probe: "BatchProbe", **options: Any) -> AsyncIterator[JetStreamContext]:
    """The probe projected by a runner in the background; its JetStream, to publish with."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    runner = ProjectionRunner(probe, pool, js, stream=settings.stream, partitions=settings.partitions, **options)
    task = asyncio.create_task(runner.run())
    try:
        yield js
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await nc.close()
        await pool.close()


async def test_a_trickle_at_a_gateways_pace_is_applied_several_events_to_a_transaction(settings: Settings) -> None:
    """An event every 30 ms on one partition (one account): with the default linger the runner waits
    for more after a partial batch, so 12 events take a few transactions. Each batch costs the same
    fetch, transaction, checkpoint and ack however few events it holds (20 ms of linger took 6 here)."""
    probe = BatchProbe(12)
    account = f"acc_{uuid.uuid4().hex[:12]}"
    async with running(settings, probe, linger_s=settings.projection_linger_s) as js:
        await asyncio.sleep(1.0)  # every partition's consumer made and fetching
        for _ in range(12):
            await publish_usage(js, account)
            await asyncio.sleep(0.03)
        await asyncio.wait_for(probe.all_applied.wait(), 15)
        assert sum(probe.batches) == 12
        assert len(probe.batches) <= 4, probe.batches


class PauseProbe(BatchProbe):
    """Notes only the batches holding its account's events: its partition may hold the module's other
    tests' events too, which a runner from the start of the log applies before the pause."""

    name = "pause_probe"

    def __init__(self, account: str) -> None:
        super().__init__(1)
        self.account = account

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        mine = [item for item in batch if item.event.account_id == self.account]
        return await super().apply(conn, mine) if mine else None


async def test_a_runner_running_no_partition_is_paused_at_once_and_one_running_between_batches(
    settings: Settings,
) -> None:
    """A replay pauses every instance's runner: one that runs no partition now (a quota instance that
    owns none) is paused as soon as asked, not after a timeout; one that runs a partition pauses
    between two batches, applies nothing while paused, and goes on after."""
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    nc = await nats.connect(settings.nats_url)
    js = nc.jetstream()
    account = f"acc_{uuid.uuid4().hex[:12]}"
    probe = PauseProbe(account)
    runner = ProjectionRunner(probe, pool, js, stream=settings.stream, partitions=settings.partitions)
    stop = asyncio.Event()
    running: asyncio.Task[None] | None = None
    try:
        async with runner.pause.paused(timeout_s=2.0):  # RunnerPaused if it waited for a loop
            pass
        running = asyncio.create_task(runner.run_partition(partition_for(account, settings.partitions), stop))
        await asyncio.sleep(1.0)  # its consumer made and fetching
        async with runner.pause.paused(timeout_s=10.0):
            await publish_usage(js, account)
            await asyncio.sleep(1.5)
            assert probe.batches == []
        await asyncio.wait_for(probe.all_applied.wait(), 15)
        assert probe.batches == [1]
    finally:
        stop.set()
        if running is not None:
            await asyncio.wait_for(running, 10)
        await nc.close()
        await pool.close()


async def test_a_runners_idle_fetches_leave_no_garbage_for_the_collector(settings: Settings) -> None:
    """Every partition with nothing new ends a fetch every second. nats-py's own wait left a reference
    cycle of tasks, frames and errors at each (41 objects per fetch): in quota, young collections then
    walked 10,000-30,000 of them, each a stall of the loop up to 18 ms. Nothing is left now: over two
    idle seconds of every partition, the collector finds no garbage (DEBUG_SAVEALL keeps what it
    found, to be named). A message published then is still fetched."""
    probe = BatchProbe(1)
    async with running(settings, probe) as js:
        await asyncio.sleep(1.5)  # every partition's consumer made, what the module stored applied
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await asyncio.sleep(2.2)  # two idle fetches of every partition
            gc.collect()
            found = [
                type(o).__name__
                for o in gc.garbage
                if isinstance(o, (BaseException, types.TracebackType, types.FrameType, asyncio.Future))
            ]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert found == []
        probe.all_applied.clear()
        probe.batches.clear()
        await publish_usage(js, f"acc_{uuid.uuid4().hex[:12]}")
        await asyncio.wait_for(probe.all_applied.wait(), 5)


async def test_a_batch_applied_leaves_its_messages_to_no_reference_cycle(settings: Settings) -> None:
    """Each batch was applied through tenacity's retry loop, whose state is a reference cycle that
    also held the batch's messages (for the keep-alive of a retry): up to a batch of them per
    transaction waited for the garbage collector. A batch applied without a failure leaves nothing."""
    probe = BatchProbe(1)
    async with running(settings, probe) as js:
        await asyncio.sleep(1.5)  # every partition's consumer made, what the module stored applied
        probe.expected, probe.batches = 50, []
        probe.all_applied.clear()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            for n in range(50):
                await publish_usage(js, f"acc_{n}_{uuid.uuid4().hex[:8]}")
            await asyncio.wait_for(probe.all_applied.wait(), 10)
            gc.collect()
            found = {type(o).__name__ for o in gc.garbage if isinstance(o, (Msg, AsyncRetrying))}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert found == set()
