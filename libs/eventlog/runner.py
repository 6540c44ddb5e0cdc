"""The projection runner: the event log into a Postgres projection, exactly once in effect.

For each partition it keeps one durable pull consumer and loops: fetch a batch, apply
it to Postgres in ONE transaction together with the projection's checkpoint (the last
stream sequence applied), commit, then ack. After a crash anywhere in that loop the
broker redelivers what was not acked and the runner skips every sequence at or below
its checkpoint, so redelivery is harmless.

The checkpoint in Postgres, not the broker, says where a partition stands: each start
(re)creates the partition's consumer to deliver from checkpoint + 1, so nothing a crash
left unacked can be overtaken by newer events. While running, the consumer allows no
more unacked messages than one batch (max_ack_pending), so a lost ack is redelivered
before anything newer: sequences are never applied out of order, and none is skipped.
A delivery lost on the way (a NATS node or connection gone while a batch was in transit) shows
as a jump in the consumer's own sequence: the runner then applies nothing past it and recreates
the consumer from its checkpoint, rather than ack (AckPolicy.ALL) past an event it never got.

Transient failures (Postgres or NATS away) are retried with backoff on the same batch,
forever, without losing its place. An event that cannot be decoded or applied is sent
to the dead-letter stream and the consumer goes on.

Fencing: libs/eventlog/checkpoints.py (a runner given a `fence` stamps and checks it).
"""

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TypeVar

import asyncpg
import msgspec
import nats.errors
import nats.js
from nats.aio.msg import Msg
from nats.js import api
from opentelemetry.trace import Tracer
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from libs import failpoints, tracing
from libs.eventlog import metrics, subjects
from libs.eventlog.checkpoints import check_fence, save_checkpoint, stamp_fence
from libs.eventlog.delivery import next_delivery, sequences, skip_unread_headers, stream_seq, take_queued_first
from libs.eventlog.dispatch import unknown_event_types
from libs.eventlog.pause import Pause
from libs.eventlog.projection import TRANSIENT_ERRORS, Applied, Fence, Projection
from libs.fencing import Fenced
from proto.v1 import decode_event

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_FIRST_WAIT_S = 0.05
"""The wait before the first retries of a transient failure; later ones wait twice as long each, up to 2 s."""


class ProjectionRunner:
    def __init__(
        self,
        projection: Projection,
        pool: asyncpg.Pool,
        js: nats.js.JetStreamContext,
        *,
        stream: str,
        partitions: int,
        batch: int = 1000,
        ack_wait_s: float = 10.0,
        linger_s: float = 0.0,
        tracer: Tracer | None = None,
        fence: Fence | None = None,
    ) -> None:
        """fence: the fencing token of each partition (module docstring); None: unfenced, for a
        runner that is the only writer by construction (a replay's rebuild, tests)."""
        if unknown := unknown_event_types(projection.event_types):
            raise ValueError(f"projection {projection.name} reads event types the log does not have: {unknown}")
        self.projection = projection
        self._tracer = tracer
        self._pool = pool
        self._js = js
        self._stream = stream
        self._partitions = partitions
        self._batch = batch
        self._ack_wait_s = ack_wait_s
        self._linger_s = linger_s
        self._fence = fence
        self._fences: dict[int, int] = {}
        """The token each partition is projected under, stamped when its loop started."""
        self.fenced: set[int] = set()
        """Partitions stopped because a newer writer took them (until this runner takes them again)."""
        self._keep_alives: set[asyncio.Future[None]] = set()
        metrics.dead_letters.add(0, {"projection": projection.name})  # a DLQ panel shows 0, not "no data"
        self._partition_locks = [asyncio.Lock() for _ in range(partitions)]
        """Held while a partition's batch is applied, and by reapply(): one change at a time."""
        self.pause = Pause(idle=lambda: not self._runs_all and not self._looping)
        self._runs_all = False
        """run() runs every partition (it parks them all itself); else run_partition runs some."""
        self._looping: set[int] = set()
        """The partitions run by run_partition whose loop is running (not parked, not stopped)."""
        self.applied: dict[int, int] = {}
        """The last stream sequence applied per partition, set once its batch is committed and its
        after-commit step (the service's memory) ran: what the projection shows is at least this.
        A service answers it to callers waiting on the barrier (libs/eventlog/barrier.py)."""

    def consumer_name(self, partition: int) -> str:
        return f"{self.projection.name}-p{partition}"

    async def run(self) -> None:
        self._runs_all = True
        while True:  # the partition loops return when a pause is requested: see pause.py
            await asyncio.gather(*(self._run_partition(p) for p in range(self._partitions)))
            await self.pause.park()

    async def run_partition(self, partition: int, stop: asyncio.Event) -> None:
        """Run one partition until `stop` is set (within a fetch's second): for a service whose
        instances own partitions through leases (libs/leases.py), which runs the partitions it
        owns, each from its checkpoint, instead of `run()`'s every one. A pause (a replay) holds
        once every partition running so has parked."""
        while not stop.is_set():
            self._looping.add(partition)
            try:
                await self._run_partition(partition, stop)
            finally:
                self._looping.discard(partition)
                if not self._looping:
                    self.pause.all_parked()
            if stop.is_set() or partition in self.fenced:
                return
            await self.pause.park(last=False)

    async def _run_partition(self, partition: int, stop: asyncio.Event | None = None) -> None:
        self.fenced.discard(partition)
        try:
            await self._project_partition(partition, stop)
        except Fenced as exc:
            self.fenced.add(partition)
            self._fences.pop(partition, None)
            metrics.fenced_batches.add(1, {"projection": self.projection.name})
            log.error("%s p%d: stopped, a stale writer: %s", self.projection.name, partition, exc)

    async def _start_partition(self, partition: int) -> int:
        """The partition's checkpoint, after stamping this writer's fence on it (if fenced)."""
        if self._fence is None:
            return await self._retry_forever(lambda: self._load_checkpoint(partition), "load checkpoint")
        fence = self._fence(partition)
        if failpoints.fires("lease_lost_at_start"):  # a fault test: lost to a late renewal as it starts
            fence = None
        if fence is None:
            raise Fenced(f"{self.projection.name} p{partition}: its lease is not held here")

        async def stamp() -> int:
            async with self._pool.acquire() as conn:
                return await stamp_fence(conn, self.projection, partition, fence)

        last_seq = await self._retry_forever(stamp, "stamp fence")
        self._fences[partition] = fence
        return last_seq

    async def _project_partition(self, partition: int, stop: asyncio.Event | None) -> None:
        last_seq = await self._start_partition(partition)
        self.applied[partition] = max(self.applied.get(partition, 0), last_seq)
        sub = await self._retry_forever(lambda: self._subscribe(partition, last_seq), "subscribe")
        expected = 1  # a new consumer's first delivery
        while not self.pause.requested and not (stop is not None and stop.is_set()):
            try:
                msgs = await self.pause.unless_requested(sub.fetch(self._batch, timeout=1.0))
            except TimeoutError:  # nats.errors.TimeoutError, or asyncio's when the pull request expires
                continue
            except nats.errors.Error as exc:
                log.warning("%s p%d: fetch failed (%r); retrying", self.projection.name, partition, exc)
                await asyncio.sleep(0.5)
                continue
            if not msgs:
                continue
            if failpoints.fires("lose_delivery"):  # a fault test: the batch's first message lost in transit
                msgs = msgs[1:]
            if len(msgs) < self._batch and self._linger_s > 0:
                msgs += await self._more(sub, self._batch - len(msgs))
            if not msgs:  # the failpoint took the only one
                continue
            seqs = [sequences(m) for m in msgs]
            after = next_delivery([consumer for _, consumer in seqs], expected)
            if after is None:
                log.warning("%s p%d: a delivery was lost; resuming at the checkpoint", self.projection.name, partition)
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
                sub = await self._retry_forever(partial(self._subscribe, partition, last_seq), "subscribe")
                expected = 1
                continue
            expected = after
            fresh = [(seq, m) for (seq, _), m in zip(seqs, msgs, strict=True) if seq > last_seq]
            if fresh:
                consumed = [m for _, m in fresh]
                with tracing.consuming(self._tracer, self.projection.name, self.projection.event_types, consumed):
                    async with self._partition_locks[partition]:
                        try:
                            last_seq = await self._apply(partition, fresh)
                        except Fenced:  # not acked: the new owner's consumer delivers the batch
                            with contextlib.suppress(nats.errors.Error):
                                await sub.unsubscribe()
                            raise
                failpoints.hit("after_commit")
            try:
                await msgs[-1].ack()  # AckPolicy.ALL: acks the whole batch
            except nats.errors.Error as exc:
                log.warning(
                    "%s p%d: ack failed (%r); redelivery will be skipped",
                    self.projection.name,
                    partition,
                    exc,
                )
        await sub.unsubscribe()

    async def _more(self, sub: nats.js.JetStreamContext.PullSubscription, room: int) -> list[Msg]:
        """A short wait for more of a trickle, so that a busy but not saturated log is applied
        in batches rather than one event per transaction (which costs the same CPU each)."""
        await asyncio.sleep(self._linger_s)
        try:
            return list(await sub.fetch(room, timeout=0.05))
        except (TimeoutError, nats.errors.Error):
            return []

    async def _subscribe(self, partition: int, last_seq: int) -> nats.js.JetStreamContext.PullSubscription:
        durable = self.consumer_name(partition)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js.delete_consumer(self._stream, durable)
        config = api.ConsumerConfig(
            durable_name=durable,
            name=durable,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=last_seq + 1,
            ack_policy=api.AckPolicy.ALL,
            ack_wait=self._ack_wait_s,
            max_deliver=-1,
            max_ack_pending=self._batch,
            filter_subject=subjects.partition_filter(partition, self.projection.category),
        )
        await self._js.add_consumer(self._stream, config=config)
        sub = await self._js.pull_subscribe_bind(durable=durable, stream=self._stream)
        take_queued_first(sub)
        skip_unread_headers(sub, unless=tracing.TRACEPARENT.encode() if self._tracer is not None else None)
        return sub

    async def _load_checkpoint(self, partition: int) -> int:
        value = await self._pool.fetchval(
            f"SELECT last_seq FROM {self.projection.schema}.checkpoints WHERE projection = $1 AND partition = $2",
            self.projection.name,
            partition,
        )
        return int(value or 0)

    async def _apply(self, partition: int, fresh: Sequence[tuple[int, Msg]]) -> int:
        """Apply a batch, each message with its stream sequence; return the new checkpoint. Never
        gives up on transient failures."""
        last = fresh[-1][0]
        msgs = [msg for _, msg in fresh]
        event_types = self.projection.event_types
        batch: list[Applied] = []
        for seq, msg in fresh:
            if subjects.event_type_of(msg.subject) not in event_types:
                continue
            try:
                batch.append(Applied(seq, decode_event(msg.data)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._retry_forever(partial(self._dead_letter, msg, exc), "dead-letter", msgs)

        try:
            with tracing.writing(self.projection.schema, len(batch)):
                await self._retry_forever(lambda: self._commit(partition, batch, last), "apply batch", msgs)
        except Fenced:
            raise
        except Exception as exc:  # a permanent failure somewhere in the batch: find the event
            log.warning("%s p%d: batch failed (%r); applying one by one", self.projection.name, partition, exc)
            await self._apply_one_by_one(partition, batch, fresh)
            await self._retry_forever(lambda: self._commit(partition, [], last), "checkpoint", msgs)
        return last

    async def _apply_one_by_one(
        self, partition: int, batch: Sequence[Applied], fresh: Sequence[tuple[int, Msg]]
    ) -> None:
        by_seq = dict(fresh)
        msgs = list(by_seq.values())
        for item in batch:
            try:
                await self._retry_forever(partial(self._commit, partition, [item], item.seq), "apply event", msgs)
            except Fenced:
                raise
            except Exception as exc:
                # Not dead-lettered by a stale writer: its failure may be the new owner's rows.
                await self._retry_forever(partial(self._check_fence, partition), "check fence", msgs)
                msg = by_seq[item.seq]
                await self._retry_forever(partial(self._dead_letter, msg, exc), "dead-letter", msgs)
                await self._retry_forever(partial(self._commit, partition, [], item.seq), "checkpoint", msgs)

    async def _commit(self, partition: int, batch: Sequence[Applied], last_seq: int) -> None:
        after_commit = None
        fence = self._fence_of(partition)
        async with self._pool.acquire() as conn, conn.transaction():
            if batch:
                after_commit = await self.projection.apply(conn, batch)
                failpoints.hit("before_commit")
                if failpoints.fires("freeze_in_commit"):  # a fault test: frozen mid-batch, as by a GC pause
                    os.kill(os.getpid(), signal.SIGSTOP)
            await save_checkpoint(conn, self.projection, partition, last_seq, fence)
        if batch:
            metrics.events_applied.add(len(batch), {"projection": self.projection.name})
        if after_commit is not None:
            after_commit()
        self.applied[partition] = max(self.applied.get(partition, 0), last_seq)

    def projects(self, partition: int) -> bool:
        """Whether this instance projects the partition now: every one, unfenced or under run(); else
        the partitions whose loop runs here. (Whether its lease is still its own, the fence says.)"""
        return self._fence is None or self._runs_all or partition in self._looping

    async def reapply(self, partition: int, item: Applied) -> None:
        """Apply one dead-lettered event again (`flowplan dlq retry`), between the partition's
        batches so that no two transactions change the projection's memory at once. The
        checkpoint stays where it is: the partition moved past this event long ago."""
        async with self._partition_locks[partition], self._pool.acquire() as conn:
            fence = self._fence_of(partition)
            async with conn.transaction():
                if fence is not None:
                    await check_fence(conn, self.projection, partition, fence)
                after_commit = await self.projection.apply(conn, [item])
                if fence is not None:
                    await check_fence(conn, self.projection, partition, fence, lock=True)
            if after_commit is not None:
                after_commit()

    async def _check_fence(self, partition: int) -> None:
        fence = self._fence_of(partition)
        if fence is not None:
            async with self._pool.acquire() as conn:
                await check_fence(conn, self.projection, partition, fence)

    def _fence_of(self, partition: int) -> int | None:
        """The token this partition's writes carry; None when unfenced."""
        if self._fence is None:
            return None
        fence = self._fences.get(partition)
        if fence is None:  # a reapply for a partition not projected here (stopped, or never taken)
            raise Fenced(f"{self.projection.name} p{partition}: not projected under a lease here")
        return fence

    async def _dead_letter(self, msg: Msg, error: BaseException) -> None:
        seq = stream_seq(msg)
        log.error("%s: event seq %d dead-lettered: %r", self.projection.name, seq, error)
        await self._js.publish(
            subjects.dlq_subject(self.projection.name),
            msg.data,
            stream=None,
            headers={
                api.Header.MSG_ID: f"{self.projection.name}:{seq}",
                "Flowplan-Projection": self.projection.name,
                "Flowplan-Stream-Seq": str(seq),
                "Flowplan-Subject": msg.subject,
                "Flowplan-Error": repr(error)[:1000],
            },
        )
        metrics.dead_letters.add(1, {"projection": self.projection.name})

    async def _retry_forever(
        self, attempt: Callable[[], Awaitable[T]], what: str, in_progress: Sequence[Msg] = ()
    ) -> T:
        try:  # the usual case, without tenacity's state: a reference cycle per call that held the
            return await attempt()  # batch's messages until a collection (docs/performance.md)
        except TRANSIENT_ERRORS as exc:
            self._before_retry(exc, what, in_progress)
            await asyncio.sleep(RETRY_FIRST_WAIT_S)
        async for retry in AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT_ERRORS),
            wait=wait_exponential(multiplier=RETRY_FIRST_WAIT_S, max=2.0),
            before_sleep=lambda state: self._before_retry(state.outcome, what, in_progress),
            reraise=True,
        ):
            with retry:
                return await attempt()
        raise AssertionError("unreachable")

    def _before_retry(self, outcome: object, what: str, in_progress: Sequence[Msg]) -> None:
        log.warning("%s: %s failed transiently (%r); retrying", self.projection.name, what, outcome)
        for msg in in_progress:
            task = asyncio.ensure_future(self._keep_alive(msg))
            self._keep_alives.add(task)
            task.add_done_callback(self._keep_alives.discard)

    @staticmethod
    async def _keep_alive(msg: Msg) -> None:
        try:
            await msg.in_progress()
        except Exception:  # the broker is away too; redelivery is harmless
            pass
