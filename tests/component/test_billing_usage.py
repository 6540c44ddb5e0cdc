"""billing's usage counting (services/billing/projection.py `_count_usage`) against a real Postgres:
the shape of the one statement a batch sends, the hour each call is counted in, and the migration
that added the row type the batch goes as, applied on a database holding billing's rows."""

import shutil
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import asyncpg

from libs.clock import ManualClock
from libs.db import create_pool, ensure_database, migrate_async
from libs.localservers import LocalPostgres
from services.billing.projection import BillingProjection
from tests.component.conftest import Feed, ids, statements, usage

MIGRATIONS = Path(__file__).parents[2] / "services" / "billing" / "migrations"


async def test_billing_sends_a_batch_of_usage_as_one_array_and_counts_each_call_in_its_own_hour(
    database_url: str,
) -> None:
    """The batch goes as ONE parameter, an array of billing.usage_event rows, not one array per
    column (asyncpg checks every element of every array it encodes). Postgres works out what each
    call counts: a subscription call's Flows and hour, cut in the time zone the event time came with
    (an offset of +05:30 puts 10:45 in the hour from 10:00 local, 04:30 UTC); a PAYG call neither.
    A UTC hour is cut by date_bin from 2000-01-01: an event time before that is cut down too."""
    account, early = ids(), ids()
    utc = ManualClock(datetime(2026, 3, 2, 10, 45, tzinfo=UTC))
    india = ManualClock(datetime(2026, 3, 2, 10, 45, tzinfo=timezone(timedelta(hours=5, minutes=30))))
    events = (
        usage(account, utc, flows=1_000_000, client_hash="c1"),
        usage(account, india, flows=2_000_000, client_hash="c1"),
        usage(account, utc, flows=4_000_000, billing_mode="payg", usd_cost_micros=70_000, client_hash="c1"),
        usage(early, ManualClock(datetime(1999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))),
    )
    pool = await create_pool(database_url, min_size=1, max_size=1)  # one connection: asyncpg reads the type once
    try:
        feed = Feed(pool, BillingProjection(metered=False))
        await feed.apply(usage(ids(), utc))
        sent = await statements(pool, feed, *events)
        assert [s.split(" (")[0] for s in sent] == ["WITH batch AS"]
        assert "$1::billing.usage_event[]" in sent[0] and "$2" not in sent[0]
        await check_counts(pool, account)
        hour = await pool.fetchval("SELECT hour FROM billing.abuse_hours WHERE account_id = $1", early)
        assert hour == datetime(1999, 12, 31, 23, 0, tzinfo=UTC)
    finally:
        await pool.close()


async def check_counts(pool: asyncpg.Pool, account: str) -> None:

    hours = await pool.fetch(
        "SELECT hour, calls, flows_micros FROM billing.abuse_hours WHERE account_id = $1 ORDER BY hour", account
    )
    assert [tuple(r) for r in hours] == [
        (datetime(2026, 3, 2, 4, 30, tzinfo=UTC), 1, 2_000_000),
        (datetime(2026, 3, 2, 10, 0, tzinfo=UTC), 1, 1_000_000),
    ]
    costs = await pool.fetch(
        "SELECT day, calls, flows_micros, usd_micros FROM billing.costs WHERE account_id = $1", account
    )
    assert [tuple(r) for r in costs] == [(date(2026, 3, 2), 3, 3_000_000, 90_000)]
    clients = await pool.fetch("SELECT calls FROM billing.abuse_clients WHERE account_id = $1", account)
    assert [r["calls"] for r in clients] == [3]


async def test_the_usage_event_type_migration_applies_to_billing_at_the_version_before_with_rows_in_it(
    postgres: LocalPostgres, tmp_path: Path
) -> None:
    """billing_0010 adds only a type: a database at billing_0009 keeps its costs and its seen
    events, and the projection counts on from them (a call seen before is not counted again)."""
    url = f"{postgres.url.rsplit('/', 1)[0]}/flowplan_m_{uuid.uuid4().hex[:10]}"
    ensure_database(url)
    before = tmp_path / "migrations"
    before.mkdir()
    for sql in sorted(MIGRATIONS.glob("*.sql")):
        if sql.name < "billing_0010":
            shutil.copy(sql, before / sql.name)
    await migrate_async(url, before)
    account, clock = ids(), ManualClock(datetime(2026, 3, 2, 10, 45, tzinfo=UTC))
    seen = usage(account, clock, client_hash="c1")
    conn = await asyncpg.connect(url)
    try:  # what the projection had written for `seen` before the migration
        await conn.execute("INSERT INTO billing.usage_seen (event_id) VALUES ($1)", seen.event_id)
        await conn.execute(
            "INSERT INTO billing.costs VALUES ($1, $2, 'deepseek/deepseek-chat', 1, 1000000, 10000)",
            account, date(2026, 3, 2),
        )  # fmt: skip
    finally:
        await conn.close()

    assert await migrate_async(url, MIGRATIONS) == ["billing_0010_usage_event_type"]

    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        await Feed(pool, BillingProjection(metered=False)).apply(seen, usage(account, clock, client_hash="c1"))
        costs = await pool.fetch("SELECT calls, flows_micros, usd_micros FROM billing.costs WHERE account_id = $1",
                                 account)  # fmt: skip
        assert [tuple(r) for r in costs] == [(2, 2_000_000, 20_000)]
        assert await pool.fetchval("SELECT count(*) FROM billing.usage_seen") == 2
    finally:
        await pool.close()
