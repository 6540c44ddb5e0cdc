"""Quota's in-flight tracker against a real nats-server and Postgres, with the projection played by
the test (it moves quota's checkpoints itself): a call no heartbeat renews any more keeps its
reservation until the projection has applied the account's events stored by then, however long
that takes (the take-over of a partition, which waits for heartbeats and for the projection, is
tested in tests/integration/test_quota_partitions.py). A sweep of thousands lets the loop turn
between slices of them."""

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import asyncpg
import pytest
from nats.aio.client import Client

from libs.clock import ManualClock
from libs.connections import connect_nats
from libs.db import create_pool
from libs.eventlog.checkpoints import save_checkpoint
from libs.eventlog.publisher import EventPublisher
from libs.settings import Settings
from proto.v1 import AccountCreated, GatewayHeartbeat, InflightCall
from services.quota.inflight import SWEEP_SLICE, InflightTracker
from services.quota.projection import QuotaProjection
from services.quota.reservations import Reservations
from services.quota.state import QuotaState

pytestmark = pytest.mark.connected
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class World:
    def __init__(self, settings: Settings, nc: Client, pool: asyncpg.Pool) -> None:
        self.settings, self.nc, self.pool = settings, nc, pool
        self.clock = ManualClock(T0)
        self.state = QuotaState(Fraction(10, 396))
        self.tracker = InflightTracker(self.state, settings, self.clock, nc, pool, "quota")

    async def store_event(self, account_id: str) -> int:
        """An event of the account, stored in the log; its stream sequence."""
        publisher = EventPublisher(self.nc, self.settings.stream)
        await publisher.start()
        event = AccountCreated(event_id=uuid.uuid4().hex, account_id=account_id, occurred_at=T0, name="x")
        [ack] = await publisher.publish([event])
        return int(ack.seq)

    async def project_through(self, seq: int) -> None:
        """Play the projection: every partition applied through `seq`."""
        async with self.pool.acquire() as conn:
            for partition in range(self.settings.partitions):
                await save_checkpoint(conn, QuotaProjection(self.state), partition, seq)


@pytest.fixture
async def world(settings: Settings) -> AsyncIterator[World]:
    nc = await connect_nats(settings.nats_url, "test")
    pool = await create_pool(settings.database_url, max_size=2)
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM quota.checkpoints")
    yield World(settings, nc, pool)
    await pool.close()
    await nc.close()


async def test_an_ended_call_keeps_its_reservation_until_the_projection_catches_up(world: World) -> None:
    world.tracker.ready_for = lambda _account: True
    account = f"acc_{uuid.uuid4().hex[:8]}"
    seq = await world.store_event(account)  # stands for the call's usage, stored before it ended
    world.state.reservations.hold(account, "gw_1", 500, T0)
    world.state.payg_reservations.hold(account, "gw_2", 70, T0)
    world.clock.advance(timedelta(minutes=10))  # no heartbeat listed them for 10 minutes: lag of 10 minutes
    await world.tracker.sweep()
    await world.tracker.sweep()
    assert world.state.reservations.total(account) == 500 and world.state.payg_reservations.total(account) == 70
    await world.project_through(seq - 1)
    await world.tracker.sweep()
    assert world.state.reservations.total(account) == 500  # one event short: still held
    await world.project_through(seq)
    await world.tracker.sweep()
    assert world.state.reservations.total(account) == 0 and world.state.payg_reservations.total(account) == 0


async def test_a_renewed_call_is_held_and_one_with_nothing_stored_goes_at_once(world: World) -> None:
    world.tracker.ready_for = lambda _account: True
    running, fresh = f"acc_{uuid.uuid4().hex[:8]}", f"acc_{uuid.uuid4().hex[:8]}"
    await world.store_event(running)
    world.state.reservations.hold(running, "gw_run", 500, T0)
    world.state.reservations.hold(fresh, "gw_new", 9, T0)
    for _ in range(20):  # an hour-long stream, renewed every few seconds
        world.clock.advance(timedelta(minutes=3))
        beat = GatewayHeartbeat(gateway_id="g", sent_at=world.clock.now(), calls=[
            InflightCall(account_id=running, reservation_id="gw_run", billing_mode="subscription",
                         estimated_usd_micros=1, admitted_at=T0),
        ])  # fmt: skip
        world.tracker.heard(beat)
        await world.tracker.sweep()
    assert world.state.reservations.total(running) == 500
    assert world.state.reservations.total(fresh) == 0  # no event of the account in the log: nothing to wait for


def counting(held: Reservations, done: list[int]) -> None:
    """Count in done[0] every reservation the sweep lets wait for a barrier or releases."""
    wait_for, release = held.wait_for, held.release

    def counted_wait_for(*args: object, **kwargs: object) -> None:
        done[0] += 1
        wait_for(*args, **kwargs)  # type: ignore[arg-type]

    def counted_release(*args: object, **kwargs: object) -> bool:
        done[0] += 1
        return release(*args, **kwargs)  # type: ignore[arg-type]

    held.wait_for, held.release = counted_wait_for, counted_release  # type: ignore[method-assign]


async def test_a_sweep_of_thousands_lets_the_loop_turn_between_slices(world: World) -> None:
    """At 5,000 checks/s a sweep finds about 5,000 calls no heartbeat renews every second: letting
    them all wait for their barrier, then releasing them all, in one go held quota's loop 5-6 ms, the
    checks queued behind it waiting as long. Here 3,000 of three accounts (one with nothing stored,
    whose calls go at once): between two turns of the loop the sweep handles SWEEP_SLICE at most,
    counted as calls, not timed. One renewed while the sweep lets the loop turn stays held."""
    world.tracker.ready_for = lambda _account: True
    stored = [f"acc_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    fresh = f"acc_{uuid.uuid4().hex[:8]}"
    last = max([await world.store_event(account) for account in stored])
    held = world.state.reservations
    for n in range(3_000):
        held.hold([*stored, fresh][n % 3], f"gw_{n}", 1, T0)
    world.clock.advance(timedelta(minutes=10))
    await world.project_through(last)
    done, turns = [0], [0]
    counting(held, done)
    sweeping = asyncio.ensure_future(world.tracker.sweep())
    renewed = False
    while not sweeping.done():
        turns.append(done[0])
        if done[0] > 0 and not renewed:  # a heartbeat heard meanwhile: its call runs after all
            renewed = held.renew(fresh, "gw_2999", world.clock.now()) and held.renew(
                stored[0], "gw_2997", world.clock.now()
            )
        await asyncio.sleep(0)
    await sweeping
    turns.append(done[0])
    assert renewed and done[0] == 1_000 + 2 * 2_000 - 1  # each waited for its barrier and went, or went at once
    assert max(b - a for a, b in itertools.pairwise(turns)) <= SWEEP_SLICE
    assert held.held(fresh) == ["gw_2999"] and held.held(stored[0]) == ["gw_2997"]
    assert held.held(stored[1]) == []
