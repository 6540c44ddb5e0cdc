"""A projection split over instances by partition leases (libs/eventlog/partitioned.py), on a real
nats-server and Postgres: an instance that joins gets its share of the partitions, one that dies
has its share taken within the lease, a partition moves to a joining instance only once its last
batch committed, and every event is applied exactly once throughout (a row per application, in the
projection's own transaction)."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Sequence

import asyncpg
import nats
import pytest
from nats.aio.client import Client

from libs import failpoints
from libs.cancelling import cancel_and_wait
from libs.eventlog.deadletters import DeadLetterRetrier
from libs.eventlog.partitioned import PartitionedProjection
from libs.eventlog.projection import AfterCommit, Applied
from libs.eventlog.runner import ProjectionRunner
from libs.eventlog.subjects import partition_for
from libs.leases import PartitionLeases
from libs.ops import dlq
from libs.rpc import Responders
from libs.settings import Settings
from tests.integration.conftest import publish_usage
from tests.stack import eventually

pytestmark = pytest.mark.connected
LEASE_S = 1.5


class Probe:
    """Notes each event it applies in a table, inside the runner's transaction; while `gate` is
    clear, a batch waits in its transaction (a slow batch in progress)."""

    category = "usage"
    event_types = ("UsageRecorded",)

    def __init__(self, name: str, schema: str, instance: str, poison: set[str]) -> None:
        self.name, self.schema, self.instance = name, schema, instance
        self.poison = poison
        """Events whose apply fails (to be dead-lettered) while they are in it."""
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.held: list[str] = []
        """The events of the batches that waited at the gate."""

    async def apply(self, conn: asyncpg.Connection, batch: Sequence[Applied]) -> AfterCommit | None:
        if not self.gate.is_set():
            self.held += [item.event.event_id for item in batch]
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        if poisoned := [item.seq for item in batch if item.event.event_id in self.poison]:
            raise ValueError(f"poison at {poisoned}")
        await conn.executemany(
            f"INSERT INTO {self.schema}.applied (seq, event_id, instance) VALUES ($1, $2, $3)",
            [(item.seq, item.event.event_id, self.instance) for item in batch],
        )
        return None


class World:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, schema: str) -> None:
        self.settings, self.pool, self.schema = settings, pool, schema
        self.name = f"probe_{uuid.uuid4().hex[:6]}"
        self.clients: list[Client] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.instances: list[tuple[PartitionedProjection, Probe]] = []
        self.responders: list[Responders] = []
        self.poison: set[str] = set()
        self.published: list[str] = []
        self.accounts: list[str] = []
        while {partition_for(a, settings.partitions) for a in self.accounts} != set(range(settings.partitions)):
            self.accounts.append(f"acc_{uuid.uuid4().hex[:12]}")

    async def instance(self, name: str, *, as_a_service: bool = False) -> tuple[PartitionedProjection, Probe]:
        """as_a_service: its writes fenced by its leases and its dead letters retried on request, as
        Runtime.project_partitioned runs a service's projection."""
        nc = await nats.connect(self.settings.nats_url)
        self.clients.append(nc)
        probe = Probe(self.name, self.schema, name, self.poison)
        leases = PartitionLeases(nc.jetstream(), self.name, name, self.settings.partitions, lease_s=LEASE_S,
                                 hand_over=True)  # fmt: skip
        runner = ProjectionRunner(probe, self.pool, nc.jetstream(), stream=self.settings.stream,
                                  partitions=self.settings.partitions,
                                  fence=leases.revision if as_a_service else None)  # fmt: skip
        if as_a_service:
            responders = Responders(f"{self.name}-{name}", self.settings.nats_url)
            DeadLetterRetrier(runner, nc.jetstream(), self.settings.dlq_stream).serve(responders)
            await responders.start()
            self.responders.append(responders)
        await leases.start()
        projection = PartitionedProjection(leases, runner)
        self.tasks.append(asyncio.create_task(projection.run()))
        self.instances.append((projection, probe))
        return projection, probe

    async def publish(self, per_account: int = 1) -> None:
        js = self.clients[0].jetstream()
        for _ in range(per_account):
            for account in self.accounts:
                self.published.append((await publish_usage(js, account)).event_id)

    async def applied_once(self) -> dict[str, str] | None:
        """Event id -> the instance that applied it, once every published event is applied; a
        second application of any event fails the test at once."""
        rows = await self.pool.fetch(f"SELECT event_id, instance FROM {self.schema}.applied")
        by_event: dict[str, str] = {}
        for row in rows:
            assert row["event_id"] not in by_event, f"{row['event_id']} applied twice"
            by_event[row["event_id"]] = row["instance"]
        return by_event if set(self.published) <= set(by_event) else None


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    pool = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=8)
    schema = f"probe_{uuid.uuid4().hex[:8]}"
    await pool.execute(f"""CREATE SCHEMA {schema};
        CREATE TABLE {schema}.checkpoints (projection text, partition integer, last_seq bigint NOT NULL,
                                           fence bigint NOT NULL DEFAULT 0, PRIMARY KEY (projection, partition));
        CREATE TABLE {schema}.applied (seq bigint NOT NULL, event_id text NOT NULL, instance text NOT NULL)""")
    world = World(settings, pool, schema)
    world.clients.append(await nats.connect(settings.nats_url))  # the publisher's
    yield world
    tasks = world.tasks + [task for projection, _ in world.instances for _, task in projection._running.values()]
    for _, probe in world.instances:
        probe.gate.set()
    for task in tasks:
        await cancel_and_wait(task)
    for projection, _ in world.instances:
        await projection.leases.stop(release=False)  # its renewals too, not left ticking in the session's loop
    for responders in world.responders:
        await responders.stop()
    for nc in world.clients:
        with contextlib.suppress(Exception):
            await nc.close()
    pool.terminate()


async def until(predicate: Callable[[], bool], within: float = 10) -> None:
    async def check() -> bool:
        return predicate()

    await eventually(check, within=within, interval=0.05)


def shares(*projections: PartitionedProjection) -> Callable[[], "asyncio.Future[bool]"]:
    """Each projects exactly its desired share, the shares together every partition."""

    async def check() -> bool:
        running = [p.projecting() for p in projections]
        every = set(range(projections[0].leases.partitions))
        return (
            all(r and r == p.leases.desired for r, p in zip(running, projections, strict=True))
            and set().union(*running) == every
            and sum(map(len, running)) == len(every)
        )

    return check  # type: ignore[return-value]


async def test_a_joining_instance_gets_its_share_and_a_dead_one_s_is_taken_with_every_event_applied_once(
    world: World,
) -> None:
    first = (await world.instance("a"))[0]
    everything = set(range(world.settings.partitions))
    await until(lambda: first.projecting() == everything)
    await world.publish(3)
    second = (await world.instance("b"))[0]
    await eventually(shares(first, second), within=10, interval=0.05)
    await world.publish(3)
    by_event = await eventually(world.applied_once, within=20)
    assert {by_event[e] for e in world.published[-len(world.accounts) :]} == {"a", "b"}  # both worked

    # b dies as a SIGKILLed process does: its loops stop where they are, its leases run out.
    dead = second.projecting()
    loops = [world.tasks[-1]] + [task for _, task in second._running.values()]
    for task in loops:
        task.cancel()
    for task in loops:  # gone for certain: one cancel() can be lost (libs/cancelling.py)
        await cancel_and_wait(task)
    await second.leases.stop(release=False)
    await world.clients[-1].close()
    loop = asyncio.get_running_loop()
    died = loop.time()
    await world.publish(2)
    await until(lambda: first.projecting() == everything)
    took = loop.time() - died
    print(f"\n{len(dead)} partitions of a dead instance projected again after {took:.1f} s (lease {LEASE_S} s)")
    assert took < LEASE_S + 2.0, took  # the lease runs out, then the next tick takes it
    by_event = await eventually(world.applied_once, within=20)
    assert dead and {by_event[e] for e in world.published[-2 * len(world.accounts) :]} == {"a"}

    await first.stop()  # a clean shutdown: the loop ends, every partition stopped and handed over at once
    await asyncio.wait_for(world.tasks[0], 5)
    assert not first.projecting() and not any(first.leases.holds(p) for p in everything)


async def test_a_partition_moves_to_a_joining_instance_only_once_its_last_batch_committed(world: World) -> None:
    first, probe = await world.instance("a")
    everything = set(range(world.settings.partitions))
    await until(lambda: first.projecting() == everything)
    probe.gate.clear()  # every partition's next batch waits in its transaction
    await world.publish(1)
    await until(lambda: probe.waiting == len(everything))
    second = (await world.instance("b"))[0]
    await until(lambda: bool(first.leases.leaving()))
    leaving = first.leases.leaving()
    await asyncio.sleep(2 * LEASE_S)  # longer than a lease: kept by renewals, not taken, not dropped
    assert first.leases.leaving() == leaving and not second.projecting()
    assert first.projecting() == everything
    probe.gate.set()  # the batches commit; only then are the leaving partitions stopped and handed over
    await eventually(shares(first, second), within=10, interval=0.05)
    assert second.projecting() == leaving
    await world.publish(1)
    by_event = await eventually(world.applied_once, within=20)
    assert {by_event[e] for e in probe.held} == {"a"}  # the batches in progress: by a, and not again by b
    assert {by_event[e] for e in world.published[len(world.accounts) :]} == {"a", "b"}


async def test_a_dead_letter_is_retried_by_the_instance_that_projects_its_partition(world: World) -> None:
    """Every instance hears `flowplan dlq retry`, and the one that projects the dead letter's partition
    applies it, whichever that is: one instance picked by a queue group would be the wrong one about
    half the time here, and, fenced, could not apply it."""
    first = (await world.instance("a", as_a_service=True))[0]
    second = (await world.instance("b", as_a_service=True))[0]
    await eventually(shares(first, second), within=10, interval=0.05)
    await world.publish(1)
    await eventually(world.applied_once, within=20)
    js = world.clients[0].jetstream()
    for _ in range(3):
        for account in world.accounts:
            event_id = uuid.uuid4().hex
            world.poison.add(event_id)  # before it is published: a projection can apply it before the ack comes back
            world.published.append((await publish_usage(js, account, event_id)).event_id)

    async def dead_lettered() -> list[dlq.DeadLetter] | None:
        letters = await dlq.list_dead_letters(world.settings, world.name)
        return letters if len(letters) == len(world.poison) else None

    letters = await eventually(dead_lettered, within=20)
    world.poison.clear()  # the cause fixed
    retried = await dlq.retry(world.settings, [], world.name, False, timeout_s=5.0)
    assert [(r.applied, r.error) for r in retried] == [(True, None)] * len(letters)
    await eventually(world.applied_once, within=10)  # the retried events too, each once
    owner = {p: name for name, projection in (("a", first), ("b", second)) for p in projection.projecting()}
    by_seq = {letter.event_seq: letter for letter in letters}
    rows = await world.pool.fetch(f"SELECT seq, instance FROM {world.schema}.applied WHERE seq = ANY($1)", list(by_seq))
    assert {row["instance"] for row in rows} == {"a", "b"}  # both applied some: each its own partitions'
    for row in rows:
        assert row["instance"] == owner[partition_for(by_seq[row["seq"]].account, world.settings.partitions)]
    assert not await dlq.list_dead_letters(world.settings, world.name)


async def test_a_partition_fenced_as_it_started_is_started_again_while_its_lease_is_held(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A renewal late under load can lose a lease just as a partition's projection starts, and the
    next tick acquires it again: that start ends, fenced, and the partition is started again under
    the lease held then, rather than left unprojected for as long as its lease is held."""
    monkeypatch.setitem(failpoints._armed, "lease_lost_at_start", 1)
    projection = (await world.instance("a", as_a_service=True))[0]
    await until(lambda: projection.projecting() == set(range(world.settings.partitions)))
    assert "lease_lost_at_start" not in failpoints._armed  # it fired: one partition's first start was fenced
    await world.publish(2)
    await eventually(world.applied_once, within=20)
