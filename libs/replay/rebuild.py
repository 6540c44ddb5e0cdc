"""One replay of one projection, run inside the service that owns it.

1. Empty copies of the projection's tables in a fresh schema (<schema>_rebuild).
2. The log, partition by partition, into them with the service's own projection code (a
   second instance with memory of its own), in big transactions without synchronous commit.
   Each partition is read no further than the live projection's checkpoint, so the rebuild
   never overtakes it; this repeats while the live projection moves on.
3. Caught up: the live runner is paused between batches (on every instance of the service that
   projects: instances.py), the rebuild applies exactly up to the live checkpoints, and both are
   equal by construction or by bug. The checkpoints' fences (the live writers' lease revisions,
   libs/eventlog/runner.py) are carried over as they are.
   With verify, a REPEATABLE READ snapshot of both is taken while paused; the live runner
   goes on and the snapshot is compared table by table. Differences stop the replay unless
   the caller asked to swap anyway (a rebuild after a bug fix is meant to differ).
4. Swap: paused again and caught up again, the fresh tables replace the live ones in one
   transaction, every instance reloads its memory from them, and the runners resume from their
   checkpoints (which equal the old ones).

One replay of a projection at a time, across instances: the rebuild holds a Postgres advisory lock
named after the schema for as long as it runs (released with its connection, even by a crash).
"""

import asyncio
import bisect
import gc
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Protocol

import asyncpg
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from libs.eventlog import metrics, subjects
from libs.eventlog.checkpoints import save_checkpoint
from libs.eventlog.delivery import stream_seq
from libs.eventlog.pause import RunnerPaused
from libs.eventlog.projection import TRANSIENT_ERRORS, Applied, Projection
from libs.eventlog.runner import ProjectionRunner
from libs.replay import tables
from libs.replay.instances import Hold, PauseAll
from libs.replay.reader import PartitionReader
from libs.replay.verify import compare
from proto.v1 import ReplayProgress, StartReplay, decode_event
from proto.v1.messages import ReplayPhase, TableDifference

log = logging.getLogger(__name__)
READ_BATCH = 5000
"""Events per fetch and per transaction: big enough to cost little per event, small enough that
one batch's Python work does not hold the service's event loop for long."""
APPLYING_AT_ONCE = 2
"""Partitions applying at once: one's Python work overlaps another's wait for Postgres; more
would only queue more work ahead of the service's requests."""
CLOSE_ENOUGH = 2000
"""Fewer events than this left to catch up with the live projection: pause it and finish."""


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Python's cycle collector, left as it is, takes about a third of a rebuild's CPU: the tens of
    thousands of messages in flight survive the youngest generation and keep triggering full
    collections over everything the service holds. So the service's objects are frozen out of
    collection and the youngest generation is collected 100 times less often, for the rebuild."""
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count() > 0  # a service froze what it built at start (libs.service.settle_heap)
    gc.freeze()
    gc.set_threshold(max(thresholds[0], 70_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not frozen:
            gc.unfreeze()


class Rebuildable(Projection, Protocol):
    """What a projection adds to be rebuilt: Runtime.project registers every projection for replay."""

    tables: tuple[str, ...]
    """Every table apply() writes, checkpoints included: what is rebuilt, compared and swapped."""

    def rebuilt_into(self, schema: str) -> Projection:
        """A projection of the same kind writing into `schema`, with memory of its own, empty."""
        ...

    async def reload(self, conn: asyncpg.Connection) -> None:
        """Reload the service's memory from the projection's tables (they were just swapped)."""
        ...


class Rebuild:
    def __init__(
        self,
        projection: Rebuildable,
        runner: ProjectionRunner,
        live_pool: asyncpg.Pool,
        nc: Client,
        *,
        database_url: str,
        stream: str,
        partitions: int,
        request: StartReplay,
        pause_all: PauseAll,
        replay_id: str,
    ) -> None:
        self.projection, self.runner, self.request = projection, runner, request
        self._pause_all, self.replay_id = pause_all, replay_id
        self.instances: list[str] = []
        self._lock: asyncpg.Connection | None = None
        self._locked = False
        self._live_pool, self._nc, self._database_url = live_pool, nc, database_url
        self._stream, self._partitions = stream, partitions
        self._schema = f"{projection.schema}_rebuild"
        self._target = projection.rebuilt_into(self._schema)
        self._readers: list[PartitionReader] = []
        self._position = [0] * partitions
        self._held: list[list[Msg]] = [[] for _ in range(partitions)]
        self._pool: asyncpg.Pool | None = None
        self._applying = asyncio.Semaphore(APPLYING_AT_ONCE)
        self.phase: ReplayPhase = "rebuilding"
        self.read = self.skipped = 0
        self.started = time.monotonic()
        self.rebuild_seconds = self.verify_seconds = self.paused_s = 0.0
        self.differences: list[TableDifference] = []
        self.swapped = False
        self.kept_schema: str | None = None
        self.error: str | None = None

    def progress(self) -> ReplayProgress:
        return ReplayProgress(
            projection=self.projection.name, phase=self.phase, read=self.read,
            total=self.read + sum(reader.pending for reader in self._readers),
            seconds=time.monotonic() - self.started, rebuild_seconds=self.rebuild_seconds,
            verify_seconds=self.verify_seconds, paused_ms=self.paused_s * 1000, skipped=self.skipped,
            verified=self.request.verify and self.phase == "done", differences=self.differences,
            swapped=self.swapped, kept_schema=self.kept_schema, error=self.error, replay_id=self.replay_id,
            instances=self.instances,
        )  # fmt: skip

    @property
    def running(self) -> bool:
        return self.phase not in ("done", "failed")

    async def run(self) -> None:
        try:
            with fewer_collections():
                await self._run()
        except Exception as exc:
            if isinstance(exc, RunnerPaused) and not self.swapped:  # an instance did not pause: said, no traceback
                log.warning("replay of %s failed before its swap: %s", self.projection.name, exc)
            else:
                log.exception("replay of %s failed", self.projection.name)
            cause: BaseException = exc
            while isinstance(cause, BaseExceptionGroup):  # a reader's or an applier's, out of _follow_live's group
                cause = cause.exceptions[0]
            self.phase, self.error = "failed", f"{type(cause).__name__}: {cause}"
            if self.swapped:  # the tables changed but memory may not have: restart, load from the tables
                raise
        finally:
            await self._clean_up()

    async def _clean_up(self) -> None:
        """Never raises: a failed clean-up must not hide how the replay ended (a leftover schema or
        consumer goes with the next replay, or by the server's inactivity threshold)."""
        for reader in self._readers:
            await reader.close()
        try:
            if self._locked and not self.swapped:  # (another instance's replay owns the schema)
                async with self._live_pool.acquire() as conn:
                    await tables.drop_schema(conn, self._schema)
            if self._pool is not None:
                await self._pool.close()
            if self._lock is not None:
                await self._lock.close()
        except Exception:
            log.exception("replay of %s: clean-up failed", self.projection.name)

    async def _run(self) -> None:
        self._lock = await asyncpg.connect(self._database_url)
        name = f"flowplan replay {self.projection.schema}"
        if not await self._lock.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", name):
            raise RuntimeError(f"a replay of {self.projection.name} is already running (on another instance)")
        self._locked = True
        self._pool = await asyncpg.create_pool(
            self._database_url, min_size=1, max_size=self._partitions + 1,
            server_settings={"synchronous_commit": "off"},  # a rebuild lost in a crash is started again
        )  # fmt: skip
        async with self._pool.acquire() as conn:
            await tables.clone_tables(conn, self.projection.schema, self._schema, self.projection.tables)
        for partition in range(self._partitions):
            reader = PartitionReader(self._nc, self._stream, partition, self.projection.category, READ_BATCH)
            self._readers.append(reader)
            await reader.start(self.request.from_seq)
        await self._follow_live()
        self.rebuild_seconds = time.monotonic() - self.started
        if self.request.verify:
            await self._verify()
            if self.differences and not self.request.swap_if_different:
                self.phase = "done"
                return
        self.phase = "swapping"
        await self._swap()
        self.phase = "done"

    async def _follow_live(self) -> None:
        while True:
            async with self._live_pool.acquire() as conn:
                bounds = await tables.checkpoints(conn, self.projection.schema, self.projection.name)
            async with asyncio.TaskGroup() as group:  # one failing cancels the others
                advancing = [group.create_task(self._advance(p, bounds.get(p, 0))) for p in range(self._partitions)]
            if sum(task.result() for task in advancing) < CLOSE_ENOUGH:
                return

    async def _catch_up_exactly(self) -> None:
        """With the live runner paused: apply up to exactly its checkpoints, and take them over."""
        self.phase = "catching_up"
        asked_at = time.monotonic()
        async with self._live_pool.acquire() as conn:
            bounds = await tables.checkpoints(conn, self.projection.schema, self.projection.name)
        async with asyncio.TaskGroup() as group:
            for partition, bound in bounds.items():
                group.create_task(self._take_over(partition, bound, asked_at))
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            await tables.carry_fences(conn, self.projection.schema, self._schema, self.projection.name)

    async def _take_over(self, partition: int, bound: int, asked_at: float) -> None:
        await self._advance(partition, bound, asked_at)
        if self._position[partition] != bound:  # nothing in the log up to it (--from-seq past it)
            await self._commit(partition, [], bound)
            self._position[partition] = bound

    async def _advance(self, partition: int, bound: int, asked_at: float | None = None) -> int:
        """Apply the partition's events up to `bound`; stop early when the log holds no more (for
        certain only for a batch fetched after `asked_at`). Returns how many were read."""
        reader, read = self._readers[partition], 0
        while self._position[partition] < bound:
            msgs, self._held[partition] = self._held[partition], []
            if not msgs:
                requested_at, msgs = await reader.next()
                if not msgs:
                    if asked_at is None or requested_at >= asked_at:
                        break
                    continue
            within = bisect.bisect_right(msgs, bound, key=stream_seq)
            self._held[partition] = msgs[within:]
            if within:
                await self._apply(partition, msgs[:within])
                read += within
            if self._held[partition]:
                break
        return read

    async def _apply(self, partition: int, msgs: Sequence[Msg]) -> None:
        batch: list[Applied] = []
        wanted = self._target.event_types
        for msg in msgs:
            if subjects.event_type_of(msg.subject) in wanted:
                try:
                    batch.append(Applied(stream_seq(msg), decode_event(msg.data)))
                except (msgspec.DecodeError, msgspec.ValidationError):
                    self.skipped += 1
        last = stream_seq(msgs[-1])
        try:
            async with self._applying:
                await self._commit(partition, batch, last)
        except TRANSIENT_ERRORS:
            raise
        except Exception as exc:  # an event the live projection dead-lettered too: find it, leave it out
            log.warning("replay of %s: batch failed (%r); applying one by one", self.projection.name, exc)
            for item in batch:
                try:
                    await self._commit(partition, [item], item.seq)
                except TRANSIENT_ERRORS:
                    raise
                except Exception as exc:
                    log.warning("replay of %s: event seq %d left out: %r", self.projection.name, item.seq, exc)
                    self.skipped += 1
            await self._commit(partition, [], last)
        self._position[partition] = last
        self.read += len(msgs)
        metrics.replay_events.add(len(msgs), {"projection": self.projection.name})

    async def _commit(self, partition: int, batch: Sequence[Applied], last_seq: int) -> None:
        assert self._pool is not None
        after_commit = None
        async with self._pool.acquire() as conn, conn.transaction():
            if batch:
                after_commit = await self._target.apply(conn, batch)
            await save_checkpoint(conn, self._target, partition, last_seq)
        if after_commit is not None:
            after_commit()  # later batches read the rebuild's own memory

    async def _verify(self) -> None:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            snapshot = conn.transaction(isolation="repeatable_read", readonly=True)
            async with self._paused():
                await self._catch_up_exactly()
                await snapshot.start()
                await conn.execute("SELECT 1")  # the snapshot is taken by the first statement
            self.phase = "verifying"
            started = time.monotonic()
            try:
                self.differences = await compare(conn, self.projection.schema, self._schema, self.projection.tables)
            finally:
                await snapshot.rollback()
            self.verify_seconds = time.monotonic() - started

    async def _swap(self) -> None:
        async with self._paused() as hold:
            await self._catch_up_exactly()
            self.phase = "swapping"
            await hold.confirm()  # every instance still paused, long enough: or nothing changes
            async with self._live_pool.acquire() as conn:
                retired = await tables.swap_tables(conn, self.projection.schema, self._schema, self.projection.tables)
            self.swapped = hold.swapped = True  # the other instances reload as they resume
            await self._live_pool.expire_connections()  # no statement prepared against the old tables survives
            async with self._live_pool.acquire() as conn:
                await self.projection.reload(conn)
        async with self._live_pool.acquire() as conn:
            if self.request.keep_old:
                self.kept_schema = retired
            else:
                await tables.drop_schema(conn, retired)

    @asynccontextmanager
    async def _paused(self) -> AsyncIterator[Hold]:
        """The live runners paused (between two of their batches, on every instance), and the time
        they stood still counted."""
        since = time.monotonic()
        try:
            async with self._pause_all.paused() as hold:
                self.instances = hold.instances
                yield hold
        finally:
            self.paused_s += time.monotonic() - since
