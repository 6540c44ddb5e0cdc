"""The component tier: one component (a projection's apply, a domain service) driven against a real
Postgres only: no nats-server, no service processes. Each module gets a fresh database with every
service's migrations (the session's Postgres is tests/conftest.py's); time comes from a ManualClock."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from libs.clock import ManualClock
from libs.db import create_pool, ensure_database, migrate_async
from libs.eventlog.checkpoints import save_checkpoint
from libs.eventlog.projection import AfterCommit, Applied, Projection
from libs.localservers import LocalPostgres
from libs.setup import migration_dirs
from proto.v1 import UsageRecorded
from proto.v1.events import AnyEvent

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
"""Where every ManualClock of this tier starts: a Monday morning, mid-month."""


@pytest.fixture(scope="module")
async def database_url(postgres: LocalPostgres) -> str:
    url = f"{postgres.url.rsplit('/', 1)[0]}/flowplan_c_{uuid.uuid4().hex[:10]}"
    ensure_database(url)
    for folder in migration_dirs():
        await migrate_async(url, folder)
    return url


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


class Feed:
    """Drives a projection as the runner does: each batch applied in one transaction together with
    the checkpoint, then its after-commit step; sequences numbered on from the last batch."""

    def __init__(self, pool: asyncpg.Pool, projection: Projection, partition: int = 0) -> None:
        self.pool, self.projection, self.partition = pool, projection, partition
        self.seq = 0

    async def apply(self, *events: AnyEvent) -> Sequence[Applied]:
        batch = []
        for event in events:
            self.seq += 1
            if type(event).__name__ in self.projection.event_types:  # the runner's filter by subject
                batch.append(Applied(self.seq, event))
        after: AfterCommit | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            if batch:
                after = await self.projection.apply(conn, batch)
            await save_checkpoint(conn, self.projection, self.partition, self.seq)
        if after is not None:
            after()
        return batch


def ids() -> str:
    return uuid.uuid4().hex[:12]


def usage(account_id: str, clock: ManualClock, flows: int = 1_000_000, **fields: Any) -> UsageRecorded:
    values: dict[str, Any] = {
        "event_id": ids(), "account_id": account_id, "occurred_at": clock.now(), "model": "deepseek/deepseek-chat",
        "input_tokens": 1000, "output_tokens": 500, "billing_mode": "subscription", "usd_cost_micros": 10_000,
        "flows_micros": flows, "usd_per_flow": "0.01", "multiplier": "1",
    }  # fmt: skip
    values.update(fields)
    return UsageRecorded(**values)


async def statements(pool: asyncpg.Pool, feed: Feed, *events: AnyEvent) -> list[str]:
    """Apply one batch as Feed does, and return the statements the projection's apply() sent."""
    projection: Projection = feed.projection
    sent: list[str] = []
    batch = []
    for event in events:
        feed.seq += 1
        batch.append(Applied(feed.seq, event))

    def log(record: asyncpg.connection.LoggedQuery) -> None:
        sent.append(" ".join(record.query.split()))

    async with pool.acquire() as conn:
        conn.add_query_logger(log)
        try:
            async with conn.transaction():
                await asyncio.sleep(0)
                sent.clear()  # BEGIN
                after = await projection.apply(conn, batch)
                await asyncio.sleep(0)  # the logger is called soon after each statement
                applied = list(sent)
                await save_checkpoint(conn, projection, feed.partition, feed.seq)
        finally:
            conn.remove_query_logger(log)
    if after is not None:
        after()
    return applied
