"""Several quota instances: each partition of the event log is owned by one live instance at a time
(a lease in the NATS KV bucket FLOWPLAN_LEASES, libs/leases.py), which alone projects it, admits
its accounts' calls and holds their reservations and RPM state (docs/scaling.md).

Requests name the partition in their subject (`quota.check.p.<partition>`, the partition computed
from the account exactly as the stream's transform does: libs/eventlog/subjects.partition_for); the
owner subscribes to its partitions' subjects once it is ready for them and unsubscribes before it
lets go. Nobody subscribed (the gap of a fail-over): the gateway gets no responders and answers 503
with retry-after.

Taking a partition over (the lease acquired; the previous owner died, or left, or a rebalance moved
it here):
1. note the partition's head in the log;
2. read the partition's accounts from Postgres again (another instance projected them since this one
   loaded them; by the accounts' partition column, not every account) and run the partition's
   projection from its checkpoint;
3. wait for the gateways' heartbeats: the partition's runner-up (the instance the assignment
   gives it to when its owner leaves) holds the calls in flight of its accounts from the heartbeats
   all along (services/quota/inflight.py), so it waits one interval after the lease for the calls
   the previous owner admitted last; any other instance two intervals, as after a restart;
4. wait until the projection has applied the head noted in 1;
5. subscribe to the partition's subjects: only now does it admit.
The previous owner stopped answering before its lease could expire (libs/leases.py: `owns`), so no
two instances admit for one partition at once, and the new owner's state holds every reservation
of a call still running (its gateway lists it) and the usage of every call that ended (the log).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from functools import lru_cache

import asyncpg
import msgspec
import nats.errors
import nats.js
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from libs.cancelling import cancel_and_wait
from libs.connections import subscribed
from libs.eventlog import subjects as log_subjects
from libs.eventlog.barrier import applied_by_partition
from libs.eventlog.runner import ProjectionRunner
from libs.leases import PartitionLeases
from libs.pricing.money import parse_fraction
from libs.rendezvous import runner_up
from proto.v1 import FlowRateChanged
from proto.v1.events import SYSTEM_ACCOUNT
from services.quota.state import QuotaState

log = logging.getLogger(__name__)
LEASE_S = 3.0
"""The partition lease: a killed owner's partitions are free this long after its last renewal."""
CHECK_S = 0.1


@lru_cache(maxsize=1 << 16)
def _partition_for(account_id: str, partitions: int) -> int:
    """FNV-1a over the account id in Python costs 3.6 µs a call, asked once per quota.check on its
    partition's subject, twice on the plain one, and once per release and per call a heartbeat lists;
    a hit costs 0.1 µs. The accounts calling now come again and again: a bounded cache, not an
    entry for every account ever seen."""
    return log_subjects.partition_for(account_id, partitions)


class FlowRates:
    """The Flow rate is for every account, and its events (account `_system`) live in one partition:
    every instance follows them (an ephemeral ordered consumer of those events only, from the start
    of the log: they are few), so an instance prices calls at the rate in force whatever partitions
    it owns. Applying a rate twice (here and in the owner's projection) is one rate: by event id."""

    def __init__(self, js: nats.js.JetStreamContext, stream: str, state: QuotaState) -> None:
        self._js, self._stream, self._state = js, stream, state
        self._decode = msgspec.json.Decoder(FlowRateChanged)

    async def start(self) -> None:
        await self._js.subscribe(
            f"{log_subjects.STORED_PREFIX}.*.*.{SYSTEM_ACCOUNT}.FlowRateChanged",
            stream=self._stream,
            config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
            ordered_consumer=True,
            cb=self._on_rate,
        )

    async def _on_rate(self, msg: Msg) -> None:
        try:
            rate = self._decode.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the owner's projection dead-letters it
        self._state.flow_rate.add(rate.event_id, rate.occurred_at, parse_fraction(rate.usd_per_flow))


class QuotaPartitions:
    def __init__(
        self,
        nc: Client,
        leases: PartitionLeases,
        runner: ProjectionRunner,
        state: QuotaState,
        pool: asyncpg.Pool,
        schema: str,
        *,
        stream: str,
        heartbeat_interval_s: float,
        listening_since: float,
    ) -> None:
        self._nc, self.leases, self._runner, self._state = nc, leases, runner, state
        self._pool, self._schema, self._stream = pool, schema, stream
        self._interval = heartbeat_interval_s
        self._listening_since = listening_since
        self.partitions = leases.partitions
        self._ready: set[int] = set()
        self._taking: dict[int, asyncio.Task[None]] = {}
        self._running: dict[int, tuple[asyncio.Event, asyncio.Task[None]]] = {}
        self._subs: dict[int, list[Subscription]] = {}
        self._handlers: Mapping[str, Callable[[Msg], Awaitable[None]]] = {}
        self._stopping = False
        self._copying_since: dict[int, float] = {}
        """Partitions whose calls in flight this instance holds copies of from the heartbeats (it is
        their runner-up, or takes them over), and since when."""
        self.took_over_s: dict[int, float] = {}
        """Seconds from acquiring each partition to admitting for it (the last take-over of each)."""

    def partition_of(self, account_id: str) -> int:
        return _partition_for(account_id, self.partitions)

    def ready_for(self, account_id: str) -> bool:
        """This instance owns the account's partition and has rebuilt its state: it may admit."""
        partition = self.partition_of(account_id)
        return partition in self._ready and self.leases.owns(partition)

    def copying(self, account_id: str) -> bool:
        """Hold the account's calls from the heartbeats: this instance would take its partition over
        if the owner left (the runner-up of the assignment), or takes it over now. Only one standby per
        partition does this work, not every instance."""
        return self.partition_of(account_id) in self._copying_since

    def _refresh_copying(self) -> None:
        members, me = self.leases.member_names, self.leases.instance
        copy = {p for p in range(self.partitions) if runner_up(p, members, self.partitions) == me} | set(self._taking)
        now = time.monotonic()
        for partition in copy - set(self._copying_since):
            self._copying_since[partition] = now
        for partition in set(self._copying_since) - copy - set(self._running):
            del self._copying_since[partition]

    def projecting(self) -> set[int]:
        """The partitions this instance projects, or is taking over: what it reloads after a replay."""
        return set(self._running)

    def ready(self) -> set[int]:
        return {p for p in self._ready if self.leases.owns(p)}

    def settled(self) -> bool:
        """Every partition this instance should own among the live instances is owned and ready
        (none, when the others hold them all: it stands by)."""
        return self.leases.desired <= self.ready()

    async def until_settled(self) -> None:
        while True:
            if self.settled():
                return
            await asyncio.sleep(CHECK_S)

    async def run(self, handlers: Mapping[str, Callable[[Msg], Awaitable[None]]]) -> None:
        """Follow the leases: take over what is owned, let go of what is not (every CHECK_S)."""
        self._handlers = handlers
        while not self._stopping:
            # Held, not owns(): a renewal late under load stops the admissions (ready_for checks
            # owns()) but not the partition's projection, which a take-over would redo at length.
            owned = {p for p in range(self.partitions) if self.leases.holds(p)}
            leaving = self.leases.leaving()
            for partition, (_, task) in list(self._running.items()):
                if partition not in self._taking and task.done():
                    if not task.cancelled() and (exc := task.exception()) is not None:
                        raise RuntimeError(f"quota p{partition}: the projection died") from exc
                    log.warning("quota p%d: its projection stopped, fenced; taken again while held", partition)
                    await self._let_go(partition)
            for partition in sorted(owned - leaving - set(self._running)):
                self._taking[partition] = asyncio.create_task(self._take(partition), name=f"quota-take-p{partition}")
            for partition in sorted(set(self._running) - (owned - leaving)):
                await self._let_go(partition)
            for partition in sorted(leaving - set(self._running)):  # a rebalance: handed over once let go
                await self.leases.release(partition)
            self._refresh_copying()
            for partition, task in list(self._taking.items()):
                if task.done():
                    del self._taking[partition]
                    if not task.cancelled() and task.exception() is not None:
                        log.warning("quota p%d: take-over failed (%r); again", partition, task.exception())
                        await self._let_go(partition)
            await asyncio.sleep(CHECK_S)

    async def stop(self) -> None:
        """A clean shutdown: stop answering and projecting, then hand every lease over at once."""
        self._stopping = True
        for partition in sorted(set(self._running) | set(self._taking)):
            await self._let_go(partition)
        await self.leases.stop(release=True)

    async def _take(self, partition: int) -> None:
        acquired = time.monotonic()
        stop = asyncio.Event()
        self._running[partition] = (stop, asyncio.create_task(asyncio.sleep(0)))
        head = await self._head(partition)
        async with self._pool.acquire() as conn:
            await self._state.load(conn, self._schema, {partition})
        task = asyncio.create_task(self._runner.run_partition(partition, stop), name=f"quota-projection-p{partition}")
        self._running[partition] = (stop, task)
        # Every call the old owner admitted is listed by its gateway within an interval of its
        # admission, and it admitted nothing after its deadline, before this lease could be had:
        # a runner-up that held the partition's copies for two intervals needs one more; any
        # other instance, two from now (copies start with the take-over).
        since = max(self._copying_since.setdefault(partition, acquired), self._listening_since)
        heard_enough = max(since + 2 * self._interval, acquired + self._interval)
        await asyncio.sleep(max(0.0, heard_enough - time.monotonic()))
        while (await applied_by_partition(self._pool, self._schema, "quota")).get(partition, 0) < head:
            if task.done():  # fenced as it started: the lease was lost meanwhile (the run loop takes it again)
                raise RuntimeError(f"quota p{partition}: its projection stopped before it caught up")
            await asyncio.sleep(0.05)
        if not self.leases.holds(partition):
            return  # lost meanwhile: the run loop lets go
        subs = [
            await self._nc.subscribe(log_subjects.partitioned(subject, partition), cb=handler)
            for subject, handler in self._handlers.items()
        ]
        self._subs[partition] = subs
        await subscribed(self._nc)  # ready (and healthy) once a gateway's check finds these subscribers
        self._ready.add(partition)
        self.took_over_s[partition] = time.monotonic() - acquired
        log.info("quota p%d: owned and ready after %.1f s (head %d)", partition, time.monotonic() - acquired, head)

    async def _let_go(self, partition: int) -> None:
        """Stop answering first, then stop projecting (the lease is released by leases' tick)."""
        self._ready.discard(partition)
        for sub in self._subs.pop(partition, []):
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        taking = self._taking.pop(partition, None)
        if taking is not None:
            # Ended for certain: a take-over whose cancel() was lost (libs/cancelling.py) went on to
            # subscribe and mark the partition ready after it was let go, answering for it unseen.
            await cancel_and_wait(taking)
        running = self._running.pop(partition, None)
        if running is None:
            return
        stop, task = running
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        log.info("quota p%d: let go", partition)

    async def _head(self, partition: int) -> int:
        """The last sequence stored in the partition now (0: none)."""
        js = self._nc.jetstream()
        try:
            last = await js.get_last_msg(self._stream, log_subjects.partition_filter(partition))
        except nats.js.errors.NotFoundError:
            return 0
        return int(last.seq or 0)
