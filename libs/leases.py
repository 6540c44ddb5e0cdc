"""Partition leases: which instance of a service owns which partitions of the event log, through
leases in a NATS KV bucket (docs/scaling.md, step 1 of its plan). Used by ingress, whose
instances elect the one that runs the ingress projection (rebalance=False, one partition), by
keys, billing and refund, whose instances elect a leader that decides the commands
(libs/leader.py) and share the partitions of their projections (libs/eventlog/partitioned.py), and
by quota, whose instances share the partitions (services/quota/partitions.py).

Every instance keeps a member key alive and computes, from the live members, the same desired
assignment (rendezvous hashing with bounded loads, libs/rendezvous.py: a member leaving moves mostly its
partitions, one joining takes about 1/N, and each holds P/N rounded down or up). It acquires a
desired partition with `create` (only if nobody holds it), renews what it holds with a
compare-and-set `update` every lease/3, and releases (`delete`) what is desired elsewhere. The
bucket's max age is the lease: a key nobody renews disappears after it, and the next tick of the
desired owner creates it again.

`owns(p)` is true only until `sent + lease - margin`, where `sent` is this instance's monotonic
time when it sent the last successful acquire or renewal: the server's copy of the key lives at
least until `sent + lease`, so an instance that stops renewing (paused, cut off, killed) has
stopped answering for the partition before anybody else can acquire it. No clocks are compared
across machines.

A service's leases are renewed on a thread of their own (libs/leasethread.py: its own event loop and NATS
connection), not on the service's event loop. A service applying a rebuild, a flood of usage and a
take-over at once keeps its loop busy for hundreds of milliseconds a turn, and a tick takes dozens of
turns: on the loop, every service of a replay bench lost its partitions again and again, and quota
reloaded its state each time. Kafka's consumer moved its heartbeats to a thread for the same reason
(KIP-62), and kept what the heartbeat in the poll loop gave for free, that a consumer that no longer
polls gives its partitions up (`max.poll.interval.ms`): here a service loop that has not run for
`stall_s` stops the renewals, and its partitions go to another instance.
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NamedTuple, TypeVar

import nats.errors
import nats.js
import nats.js.errors
from nats.js import api
from nats.js.kv import KeyValue
from opentelemetry.metrics import CallbackOptions, Observation
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_incrementing

from libs.cancelling import cancel_and_wait
from libs.observability import Counter, meter
from libs.rendezvous import assignment

log = logging.getLogger(__name__)
BUCKET = "FLOWPLAN_LEASES"
T = TypeVar("T")
BEAT_S = 0.5
"""How often the service's event loop notes that it runs, for the lease thread (`stall_s`)."""

_lost = Counter("leases", "flowplan_leases_lost", "partitions whose renewal found the lease taken or run out")
"""Added to on the lease threads, a key each (the lease), and read by a scrape: one writer per key."""
_live: "weakref.WeakSet[PartitionLeases]" = weakref.WeakSet()


def _observe_held(_: CallbackOptions) -> Iterable[Observation]:
    return [Observation(len(leases.owned()), {"lease": leases.service}) for leases in list(_live)]


meter("leases").create_observable_gauge(
    "flowplan_lease_partitions_held", callbacks=[_observe_held],
    description="partitions (or the leader lease) this instance owns now, by lease (the service's name)",
)  # fmt: skip


def _starting(what: str, errors: tuple[type[BaseException], ...], attempts: int) -> AsyncRetrying:
    """Retries for a start that races other instances or a bucket just created: a short, growing
    wait, and the last error raised when every attempt failed."""
    return AsyncRetrying(
        retry=retry_if_exception_type(errors),
        wait=wait_incrementing(start=0.1, increment=0.1),
        stop=stop_after_attempt(attempts),
        before_sleep=lambda state: log.info("%s (%r); trying again", what, state.outcome and state.outcome.exception()),
        reraise=True,
    )


async def lease_bucket(js: nats.js.JetStreamContext, lease_s: float, replicas: int = 1, attempts: int = 20) -> KeyValue:
    """The bucket, created by whichever instance comes first. Several services start at once and
    each may find it missing: a creation that loses that race (on a cluster: "already in use", or
    the meta leader busy) looks again rather than failing the start."""
    async for attempt in _starting(
        "lease bucket: creation raced", (nats.js.errors.APIError, nats.errors.TimeoutError), attempts
    ):
        with attempt:
            try:
                return await js.key_value(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                pass
            # No limit markers: a key that ran out leaves nothing, so `create` finds it free.
            config = api.KeyValueConfig(bucket=BUCKET, history=1, ttl=lease_s, replicas=replicas)
            return await js.create_key_value(config)
    raise AssertionError("unreachable")


class _Held(NamedTuple):
    revision: int
    """The KV revision of our owner key: the fencing token."""
    valid_until: float
    """owns() is true until then (this process's monotonic clock)."""


class PartitionLeases:
    def __init__(
        self,
        js: nats.js.JetStreamContext,
        service: str,
        instance: str,
        partitions: int,
        *,
        lease_s: float = 3.0,
        margin_s: float | None = None,
        replicas: int = 1,
        rebalance: bool = True,
        hand_over: bool = False,
        clock: Callable[[], float] = time.monotonic,
        loop: asyncio.AbstractEventLoop | None = None,
        stall_s: float | None = None,
    ) -> None:
        """rebalance=False: no assignment; every instance takes whatever is free and keeps what it
        holds until it stops or dies (one partition so: a leader, for one active instance).

        loop: the event loop of js's connection, where the renewals run (a `LeaseThread`'s); None:
        the caller's. The methods may be called from the service's loop either way; the views
        (owns, holds, revision, desired, ...) may be read from any thread.
        stall_s: with a loop of their own, the renewals stop once the caller's loop has not run for
        this long (default five leases), so that a service stuck for good hands its partitions over."""
        self.service, self.instance, self.partitions = service, instance, partitions
        self.rebalance = rebalance
        self.hand_over = hand_over
        """True: a partition desired elsewhere is kept (renewed) until the holder calls release(),
        once it has stopped working on it (quota: its projection's last batch committed), so that
        the next owner never starts while this one still writes. It is listed in `leaving()`."""
        self.lease_s, self.margin_s = lease_s, lease_s / 3 if margin_s is None else margin_s
        self._js, self._replicas, self._clock = js, replicas, clock
        self._held: dict[int, _Held] = {}
        """Replaced, never changed in place: the service's thread reads it while the lease thread
        writes it."""
        self._home, self.stall_s = loop, 5 * lease_s if stall_s is None else stall_s
        self._caller_seen: float | None = None  # when the caller's loop last ran (a lease thread's)
        self._beating: asyncio.TimerHandle | None = None
        self._member_rev = 0
        self.members = 1
        """Live members (instances) of the service at the last tick, this one included."""
        self.member_names: list[str] = [instance]
        """The live members at the last tick."""
        self.desired: set[int] = set()
        """The partitions this instance should own among the live members at the last tick."""
        self._task: asyncio.Task[None] | None = None
        self.kv: KeyValue | None = None
        _live.add(self)
        _lost.add(0, {"lease": service})  # the series from the start: a dashboard shows 0, not "no data"
        self.stopped = False
        """stop() was called: what is let go from then on is handed over on purpose, not lost."""

    def _owner_key(self, partition: int) -> str:
        return f"owner.{self.service}.{partition}"

    @property
    def _member_key(self) -> str:
        return f"member.{self.service}.{self.instance}"

    def owns(self, partition: int) -> bool:
        held = self._held.get(partition)
        return held is not None and self._clock() < held.valid_until

    def owned(self) -> set[int]:
        now = self._clock()
        return {p for p, held in self._held.items() if now < held.valid_until}

    def holds(self, partition: int) -> bool:
        """Acquired and not found lost: no renewal has yet found another holder (owns() may be false
        meanwhile, after a late renewal; the next one that succeeds proves nobody else took it)."""
        return partition in self._held

    def revision(self, partition: int) -> int | None:
        """The KV revision of our owner key of the partition, None if not held: a fencing token (a
        new owner's `create` gets a higher revision than any renewal of the previous owner's)."""
        held = self._held.get(partition)
        return None if held is None else held.revision

    def leaving(self) -> set[int]:
        """Partitions held here but desired elsewhere (hand_over=True): to release() once let go."""
        return set(self._held) - self.desired

    def _keep(self, partition: int, revision: int, sent: float) -> None:
        self._held = {**self._held, partition: _Held(revision, sent + self.lease_s - self.margin_s)}

    def _drop(self, partition: int) -> _Held | None:
        held = dict(self._held)
        dropped = held.pop(partition, None)
        self._held = held
        return dropped

    async def _at_home(self, work: Coroutine[Any, Any, T]) -> T:
        """Run the work on the renewals' loop, from the caller's."""
        if self._home is None or self._home is asyncio.get_running_loop():
            return await work
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._home))

    async def release(self, partition: int) -> None:
        """Hand a partition over now (hand_over=True, once this instance stopped working on it)."""
        if partition in self._held:
            await self._at_home(self._release(partition))

    async def start(self, attempts: int = 20) -> None:
        await self._at_home(self._start(attempts))
        if self._home is not None and self._home is not asyncio.get_running_loop():
            self._beat()

    def _beat(self) -> None:
        """Note, on the caller's loop, that it runs; again every BEAT_S."""
        self._caller_seen = time.monotonic()
        self._beating = asyncio.get_running_loop().call_later(BEAT_S, self._beat)

    async def _start(self, attempts: int) -> None:
        self.kv = await lease_bucket(self._js, self.lease_s, self._replicas)
        # A bucket just created on a cluster answers once its stream has a leader (seen: "no
        # response from stream" from the first write, and the service exited).
        errors = (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError)
        async for attempt in _starting(f"{self.service} leases: the bucket does not answer yet", errors, attempts):
            with attempt:
                await self.tick()
        self._task = asyncio.create_task(self._loop(), name=f"leases-{self.service}")

    async def stop(self, release: bool = True) -> None:
        """Stop renewing; with release, hand every partition over at once (a clean shutdown).
        Without, the leases run out by themselves, as a killed or frozen instance's do, and owns()
        stays true only until its deadline, before anybody else can acquire them."""
        self.stopped = True
        if self._beating is not None:
            self._beating.cancel()
        await self._at_home(self._stop(release))

    async def _stop(self, release: bool) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)  # not cancel() once: a renewal's reply may come with it
            self._task = None
        if release:
            for partition in list(self._held):
                await self._release(partition)
            assert self.kv is not None
            with contextlib.suppress(nats.errors.Error):
                await self.kv.delete(self._member_key, last=self._member_rev)

    async def _loop(self) -> None:
        began = time.monotonic()  # when the last tick started (start() ran the first)
        while True:
            # A third of the lease after the last tick began, not after it ended: a tick slowed by a
            # busy event loop does not stretch the time between renewals by its own length too.
            await asyncio.sleep(max(0.0, began + self.lease_s / 3 - time.monotonic()))
            began = time.monotonic()
            if self._caller_seen is not None and began - self._caller_seen > self.stall_s:
                log.error("%s leases: the service's event loop has not run for %.0f s; not renewing, so that "
                          "another instance takes its partitions", self.service, began - self._caller_seen)  # fmt: skip
                continue
            try:
                await self.tick()
            except nats.errors.Error as exc:  # NATS away: what we hold runs out by owns()'s deadline
                log.warning("%s leases: %r", self.service, exc)

    async def tick(self) -> None:
        """Renew what is held and the membership, all at once; then release what is desired
        elsewhere, and acquire what is desired here and free.

        At once: a tick of one request after another (the membership, the members, each partition)
        took seven round trips, each several turns of an event loop that a service applying a
        rebuild or a flood of usage keeps busy. It outlasted the lease, and in a replay bench every
        service lost its partitions and took them again dozens of times (quota rebuilding its state
        each time), while nats-server answered another client's lease writes in 20 ms (p50)."""
        assert self.kv is not None
        renewals = [self._renew(partition) for partition in list(self._held)]
        outcomes = await asyncio.gather(self._put(self._member_key, self._member_rev), *renewals,
                                        return_exceptions=True)  # fmt: skip
        if failed := next((o for o in outcomes if isinstance(o, BaseException)), None):
            raise failed  # what was renewed is kept; what was not runs out by owns()'s deadline
        assert isinstance(outcomes[0], int)
        self._member_rev = outcomes[0]
        members = await self._members()
        self.members = len(members)
        self.member_names = members
        if self.rebalance:
            owners = assignment(self.partitions, members)
            desired = {p for p in range(self.partitions) if owners[p] == self.instance}
        else:
            desired = set(range(self.partitions))
        self.desired = desired
        for partition in list(self._held):
            if partition not in desired and not self.hand_over:
                await self._release(partition)
        for partition in sorted(desired - set(self._held)):
            sent = self._clock()
            try:
                self._keep(partition, await self.kv.create(self._owner_key(partition), self.instance.encode()), sent)
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # still held by its previous owner: until it releases it or its lease runs out

    async def _renew(self, partition: int) -> None:
        assert self.kv is not None
        held = self._held.get(partition)
        if held is None:  # released since the tick began (hand_over: its owner's let-go)
            return
        last = held.revision
        sent = self._clock()
        try:
            revision = await self.kv.update(self._owner_key(partition), self.instance.encode(), last=last)
        except nats.js.errors.KeyWrongLastSequenceError:  # it ran out (renewals late, or NATS away)
            if not self.rebalance and await self._retake(partition, sent):
                return
            log.warning("%s leases: lost partition %d", self.service, partition)
            _lost.add(1, {"lease": self.service})
            self._drop(partition)
            return
        if self.revision(partition) == last:
            self._keep(partition, revision, sent)
        elif partition not in self._held:  # released meanwhile: its delete found this newer revision
            with contextlib.suppress(nats.errors.Error):
                await self.kv.delete(self._owner_key(partition), last=revision)

    async def _retake(self, partition: int, sent: float) -> bool:
        """A leader's lease that ran out while nobody took it (its renewals were late: a process
        starved of CPU, a slow NATS) is taken again rather than given up: the instance that still
        runs as leader would otherwise exit and another start over from nothing. A standby that
        took it meanwhile keeps it, and this one finds it lost. (Not for rebalanced partitions:
        quota's state after a gap must be rebuilt, which a take-over does.)"""
        assert self.kv is not None
        try:
            self._keep(partition, await self.kv.create(self._owner_key(partition), self.instance.encode()), sent)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        log.warning("%s leases: partition %d ran out before its renewal; nobody had taken it: taken again",
                    self.service, partition)  # fmt: skip
        return True

    async def _put(self, key: str, revision: int) -> int:
        """Create the key, or renew our revision of it (created again if it ran out)."""
        assert self.kv is not None
        if revision:
            with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                return await self.kv.update(key, self.instance.encode(), last=revision)
        return await self.kv.create(key, self.instance.encode())

    async def _members(self) -> list[str]:
        """The live members: the member keys' subjects from one STREAM.INFO, less those deleted
        (a clean stop deletes its key; the marker stays until the bucket's max age). Not kv.keys():
        its watch creates a consumer on every call, which outlives the call, and a few minutes of
        ticks filled the server's consumer limit and failed every renewal after it."""
        assert self.kv is not None
        prefix = f"member.{self.service}."
        info = await self._js.stream_info(f"KV_{BUCKET}", subjects_filter=f"$KV.{BUCKET}.{prefix}>")
        keys = [subject.removeprefix(f"$KV.{BUCKET}.") for subject in info.state.subjects or {}]
        entries = await asyncio.gather(*map(self.kv.get, keys), return_exceptions=True)  # at once, as tick()'s
        members = []
        for key, entry in zip(keys, entries, strict=True):
            if isinstance(entry, nats.js.errors.KeyNotFoundError):  # deleted (or just ran out)
                continue
            if isinstance(entry, BaseException):
                raise entry
            members.append(key[len(prefix) :])
        return sorted(members) or [self.instance]

    async def _release(self, partition: int) -> None:
        assert self.kv is not None
        held = self._drop(partition)  # stop answering first, then hand over
        if held is None:
            return
        with contextlib.suppress(nats.errors.Error):
            await self.kv.delete(self._owner_key(partition), last=held.revision)


async def held(leases: PartitionLeases, want: bool, partition: int = 0, every_s: float = 0.2) -> None:
    """Return once holding the partition is `want` (polled: a lease also ends by time passing)."""
    while True:
        if leases.owns(partition) == want:
            return
        await asyncio.sleep(every_s)


PARTITION_LEASE_S = 3.0
"""A projection partition's lease: a killed owner's partitions are free this long after its last renewal."""


def instance_name() -> str:
    """This process's name among its service's instances (the member and owner keys' value)."""
    return f"{socket.gethostname()}-{os.getpid()}"
