"""Partition leases in a NATS KV bucket (libs/leases.py, docs/scaling.md) on a real nats-server:
every partition has exactly one owner, a killed owner's partitions are taken within 5 s and never
owned by two instances at once, a joining instance gets its share and a leaving one hands over."""

import asyncio
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client

from libs.leader import lead, leader_leases
from libs.leases import PartitionLeases, held, lease_bucket
from libs.leasethread import LeaseThread
from libs.localservers import LocalNats
from libs.observability import install, prometheus_text
from libs.rendezvous import assignment

pytestmark = pytest.mark.connected
PARTITIONS = 16


@pytest.fixture
async def connections(nats_server: LocalNats) -> AsyncIterator[Callable[[], asyncio.Future[Client]]]:
    opened: list[Client] = []

    async def connect() -> Client:
        nc = await nats.connect(nats_server.url)
        opened.append(nc)
        return nc

    yield connect  # type: ignore[misc]
    for nc in opened:
        await nc.close()


async def holder(
    connect: Callable[[], "asyncio.Future[Client]"], service: str, name: str, lease_s: float
) -> PartitionLeases:
    nc = await connect()
    leases = PartitionLeases(nc.jetstream(), service, name, PARTITIONS, lease_s=lease_s)
    await leases.start()
    return leases


async def watch_exclusive(holders: list[PartitionLeases], until: Callable[[], bool], within: float) -> float:
    """Sample ownership every 20 ms until `until()`; fail at once if two holders own one partition."""
    started = time.monotonic()
    while not until():
        owners = [p for h in holders for p in h.owned()]
        assert len(owners) == len(set(owners)), f"a partition with two owners: {sorted(owners)}"
        assert time.monotonic() - started < within, [sorted(h.owned()) for h in holders]
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def settled(holders: list[PartitionLeases]) -> Callable[[], bool]:
    return lambda: sorted(p for h in holders for p in h.owned()) == list(range(PARTITIONS))


def balanced(holders: list[PartitionLeases]) -> Callable[[], bool]:
    """Each holder owns exactly the partitions the assignment gives it among them all."""
    owners = assignment(PARTITIONS, [h.instance for h in holders])
    share = {h.instance: {p for p in range(PARTITIONS) if owners[p] == h.instance} for h in holders}
    return lambda: all(h.owned() == share[h.instance] for h in holders)


async def test_a_killed_owner_s_partitions_are_taken_within_5_s_and_never_owned_twice(connections) -> None:
    service = f"quota-{uuid.uuid4().hex[:6]}"
    a = await holder(connections, service, "a", lease_s=3.0)
    b = await holder(connections, service, "b", lease_s=3.0)
    await watch_exclusive([a, b], balanced([a, b]), within=10)
    assert a.owned() and b.owned()  # both got a share

    lost = a.owned()
    # What SIGKILL (or a frozen process) leaves: a's leases run out by themselves, and a, were it
    # still running, believes it owns them until its deadline, which passes before b can have them.
    await a.stop(release=False)
    assert a.owned() == lost
    took = await watch_exclusive([a, b], lambda: b.owned() == set(range(PARTITIONS)), within=5)
    assert not a.owned()
    print(f"\n{len(lost)} partitions of a killed owner taken over after {took:.1f} s (lease 3 s)")
    await b.stop()


async def test_a_joining_instance_gets_its_share_and_a_leaving_one_hands_over_at_once(connections) -> None:
    service = f"keys-{uuid.uuid4().hex[:6]}"
    a = await holder(connections, service, "a", lease_s=1.5)
    await watch_exclusive([a], settled([a]), within=5)
    b = await holder(connections, service, "b", lease_s=1.5)
    c = await holder(connections, service, "c", lease_s=1.5)
    everyone = [a, b, c]

    await watch_exclusive(everyone, balanced(everyone), within=10)
    await c.stop()  # a clean shutdown releases at once: no wait for the lease to run out
    took = await watch_exclusive(everyone, settled([a, b]), within=5)
    assert took < 1.5
    await a.stop()
    await b.stop()


async def test_ticking_leaves_no_consumers_behind(connections) -> None:
    """Every tick lists the members; a listing that created a consumer each time (kv.keys()) left
    them behind until the server's consumer limit failed every renewal, a few minutes into a run."""
    nc = await connections()
    service = f"quota-{uuid.uuid4().hex[:6]}"
    leases = PartitionLeases(nc.jetstream(), service, "a", PARTITIONS, lease_s=60)
    await leases.start()
    for _ in range(30):
        await leases.tick()
    info = await nc.jetstream().stream_info("KV_FLOWPLAN_LEASES")
    assert info.state.consumer_count == 0
    assert leases.member_names == ["a"] and leases.owned() == set(range(PARTITIONS))
    await leases.stop()


async def test_with_hand_over_a_partition_desired_elsewhere_moves_only_once_released(connections) -> None:
    """quota lets a partition go (its projection's last batch committed) before the next owner may
    take it: the holder keeps renewing it, listed in leaving(), until it calls release()."""
    service = f"quota-{uuid.uuid4().hex[:6]}"
    nc = await connections()
    a = PartitionLeases(nc.jetstream(), service, "a", PARTITIONS, lease_s=1.5, hand_over=True)
    await a.start()
    await watch_exclusive([a], settled([a]), within=5)
    b = await holder(connections, service, "b", lease_s=1.5)
    await watch_exclusive([a, b], lambda: bool(a.leaving()), within=5)
    leaving = a.leaving()
    await asyncio.sleep(3.5)  # more than two leases: kept by renewals, not taken
    assert a.owned() == set(range(PARTITIONS)) and not b.owned() and a.leaving() == leaving
    for partition in leaving:
        await a.release(partition)
    await watch_exclusive([a, b], balanced([a, b]), within=5)
    assert b.owned() == leaving
    await a.stop()
    await b.stop()


async def test_a_late_renewal_stops_owning_but_not_holding_and_the_next_one_proves_it(connections) -> None:
    """A leader (libs/leader.lead) starved of CPU past its deadline must stop answering, not give
    up: if the next renewal succeeds, nobody else held the key meanwhile."""
    now = [0.0]
    nc = await connections()
    leases = PartitionLeases(
        nc.jetstream(), f"billing-{uuid.uuid4().hex[:6]}-leader", "a", 1, lease_s=3.0, rebalance=False,
        clock=lambda: now[0],
    )  # fmt: skip
    leases.kv = await lease_bucket(nc.jetstream(), 3.0)
    await leases.tick()
    assert leases.owns(0) and leases.holds(0)
    now[0] += 2.5  # the renewal is late: past the deadline (lease - margin), the key not yet expired
    assert not leases.owns(0) and leases.holds(0)
    await leases.tick()
    assert leases.owns(0) and leases.holds(0)
    await leases.kv.delete(f"owner.{leases.service}.0")  # as if it had run out, renewals too late
    await leases.tick()  # nobody took it: a leader's lease is taken again, not given up
    assert leases.owns(0) and leases.holds(0)
    other = PartitionLeases(nc.jetstream(), leases.service, "b", 1, lease_s=3.0, rebalance=False)
    other.kv = leases.kv
    await leases.kv.delete(f"owner.{leases.service}.0")  # ran out again
    await other.tick()  # and another instance took it this time
    await leases.tick()
    assert not leases.holds(0) and other.owns(0)


async def test_stop_ends_the_renewals_even_when_cancelled_as_a_reply_comes_in(connections) -> None:
    """A stop lands in the middle of a tick's requests, and now and then in the moment a reply has
    come in, where Python 3.11's wait_for (in nats-py's request) loses one cancel(): the renewals went
    on and stop() waited for ever (27 stops in 300 so, ticking every 50 ms: a 300 s hang of
    tests/integration/test_partitioned_projection.py). Stopped at random moments, each returns."""
    nc = await connections()
    service = f"stopping-{uuid.uuid4().hex[:6]}"
    rng = random.Random(14)
    for i in range(60):
        leases = PartitionLeases(nc.jetstream(), f"{service}-{i}", "a", 4, lease_s=0.15)  # a tick every 50 ms
        await leases.start()
        await asyncio.sleep(rng.uniform(0, 0.1))
        stopping = asyncio.ensure_future(leases.stop(release=False))
        await asyncio.wait([stopping], timeout=3)
        assert stopping.done(), f"stop {i} still waits for the renewals to end"


async def test_an_event_loop_busy_60_ms_a_turn_keeps_what_it_holds(connections, caplog) -> None:
    """A service applying a rebuild or a flood of usage keeps its event loop busy, each request of a
    tick taking several turns. A tick of seven requests in a row (membership, members, each partition)
    outlasted the lease: in a replay bench every service lost its partitions and took them again
    dozens of times. The renewals go at once now, and ticks come a third of the lease apart from
    their starts. Measured here: a tick took 3.3-5.1 s before (the lease is 3 s), 1.6 s now."""
    nc = await connections()
    leases = PartitionLeases(nc.jetstream(), f"busy-{uuid.uuid4().hex[:6]}", "a", 4, lease_s=3.0, hand_over=True)
    await leases.start()
    for partition in range(4):
        await asyncio.wait_for(held(leases, True, partition, every_s=0.05), 10)
    busy = True

    async def hog() -> None:  # as a batch being applied: 60 ms of work between two turns of the loop
        while busy:
            time.sleep(0.06)  # noqa: ASYNC251 (blocking the loop is the point)
            await asyncio.sleep(0)

    with caplog.at_level(logging.WARNING, logger="libs.leases"):
        hogging = asyncio.create_task(hog())
        await asyncio.sleep(7)
        busy = False
        await hogging
    await leases.stop()
    assert [r.getMessage() for r in caplog.records if "lost partition" in r.getMessage()] == []


@pytest.fixture
async def lease_threads(nats_server: LocalNats) -> AsyncIterator[Callable[[str], "asyncio.Future[LeaseThread]"]]:
    started: list[LeaseThread] = []

    async def start(name: str) -> LeaseThread:
        thread = LeaseThread(nats_server.url, name)
        await thread.start()
        started.append(thread)
        return thread

    yield start  # type: ignore[misc]
    for thread in started:
        await thread.close()
        assert not thread.running


def hold_the_gil(seconds: float) -> None:
    """Python work that keeps the service's thread busy, as decoding and counting a batch does (not
    time.sleep, which lets other threads have the GIL at once)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


async def test_leases_on_their_thread_are_kept_through_one_second_turns_of_the_service_s_loop(
    lease_threads, caplog
) -> None:
    """The renewals on a thread of their own: a service loop busy a whole second a turn (a tick on
    that loop takes dozens of turns, and loses every partition under it) keeps what it holds, and a
    release asked from that loop is done on the lease thread."""
    thread = await lease_threads("busy")
    leases = thread.leases(f"busy-{uuid.uuid4().hex[:6]}", 4, instance="a", lease_s=1.5, hand_over=True)
    await leases.start()
    for partition in range(4):
        await asyncio.wait_for(held(leases, True, partition, every_s=0.05), 10)
    with caplog.at_level(logging.WARNING, logger="libs.leases"):
        for _ in range(5):  # five turns of a second: more than three leases
            hold_the_gil(1.0)
            assert leases.owned() == {0, 1, 2, 3}
            await asyncio.sleep(0)
    assert [r.getMessage() for r in caplog.records if "lost partition" in r.getMessage()] == []
    await leases.release(3)
    assert leases.owned() == {0, 1, 2}
    await leases.stop()
    assert not leases.owned()


async def test_a_service_loop_stuck_past_stall_s_gives_its_partitions_up(lease_threads, caplog) -> None:
    """What the renewals on the service's loop gave for free, a thread must do on purpose: a service
    whose loop no longer runs (stuck in a long computation, a deadlock) stops renewing, and another
    instance takes its partitions, as if it had died."""
    service = f"stuck-{uuid.uuid4().hex[:6]}"
    a = (await lease_threads("a")).leases(service, 4, instance="a", lease_s=1.5, stall_s=2.0)
    await a.start()
    for partition in range(4):
        await asyncio.wait_for(held(a, True, partition, every_s=0.05), 10)
    b = (await lease_threads("b")).leases(service, 4, instance="b", lease_s=1.5, rebalance=False, stall_s=60)
    await b.start()  # rebalance=False: takes whatever is free, as soon as it is
    with caplog.at_level(logging.ERROR, logger="libs.leases"):
        hold_the_gil(6.0)  # a's renewals stop after 2 s; its keys run out 1.5 s later; b takes them
        assert b.owned() == {0, 1, 2, 3} and not a.owned()
    assert any("has not run for" in r.getMessage() for r in caplog.records)
    await asyncio.wait_for(held(a, False, 0), 5)
    await a.stop(release=False)
    await b.stop()


async def test_a_leader_s_clean_stop_is_not_taken_for_a_lost_lease(lease_threads) -> None:
    """keys, billing and refund hand their leader lease over as they stop, and then stop their
    projections, which can take longer than lead()'s look at the lease (every 0.2 s): it raised
    "the leader's lease was lost" meanwhile, and the process exited with 70 half-way through its
    clean shutdown (seen on a Ctrl-C of `make run`)."""
    leases = leader_leases(await lease_threads("leader"), f"clean-{uuid.uuid4().hex[:6]}")
    await leases.start()
    leading = asyncio.Event()

    async def begin() -> None:
        pass

    leader = asyncio.create_task(lead(leases, begin, leading))
    await asyncio.wait_for(leading.wait(), 10)
    await leases.stop(release=True)
    await asyncio.wait_for(leader, 2)  # ends by itself, and raises nothing


def _metric(name: str, lease: str) -> float | None:
    found = re.search(rf'^{name}\{{[^}}]*lease="{lease}"[^}}]*\}} (\S+)$', prometheus_text().decode(), re.M)
    return float(found.group(1)) if found else None


async def test_partitions_held_and_leases_lost_are_on_metrics(connections) -> None:
    """A lease lost is a take-over (quota reloads the partition's state): operators see each one, and
    how many partitions each instance holds, on /metrics and the event log dashboard."""
    install("test")
    nc = await connections()
    service = f"metered-{uuid.uuid4().hex[:6]}"
    leases = PartitionLeases(nc.jetstream(), service, "a", 2, lease_s=60)  # ticks by hand below
    await leases.start()
    assert _metric("flowplan_lease_partitions_held", service) == 2
    assert _metric("flowplan_leases_lost_total", service) == 0  # there from the start, not "no data"
    assert leases.kv is not None
    await leases.kv.delete(f"owner.{service}.1")  # it ran out, renewals late ...
    await leases.kv.create(f"owner.{service}.1", b"b")  # ... and another instance took it
    await leases.tick()
    assert _metric("flowplan_leases_lost_total", service) == 1
    assert _metric("flowplan_lease_partitions_held", service) == 1
    await leases.stop()
    assert _metric("flowplan_lease_partitions_held", service) == 0
