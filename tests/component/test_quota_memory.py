"""quota's memory loaded from its tables (QuotaState.load): the windows it packs read back as the rows
hold them, at any microsecond, and an account with open windows takes well under 1 KB (issue 14)."""

import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.memory import generate_quota
from libs.eventlog.subjects import partition_for
from libs.pricing.catalog import load_catalog
from libs.settings import DEFAULT_PARTITIONS
from services.quota.domain.windows import FIVE_HOURS, ONE_WEEK, Window
from services.quota.state import QuotaState

CATALOG = load_catalog()


async def test_load_gives_the_windows_the_rows_hold_at_any_microsecond(pool: asyncpg.Pool) -> None:
    """load() reads the windows' times as microseconds since the epoch: exact for any timestamp, and a
    row whose end is not its start + the chain's length (none is written so) is kept as it is."""
    starts = [
        datetime(2026, 3, 2, 9, 0, 0, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2199, 12, 31, 18, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 30, 0, 500_000, tzinfo=UTC),
    ]
    rows = []
    for i, start in enumerate(starts):
        account = f"acc_load_{i}"
        ends = (start + FIVE_HOURS, start + ONE_WEEK) if i != 3 else (start + timedelta(hours=5, microseconds=1),
                                                                       start + timedelta(days=6))  # fmt: skip
        rows.append((account, start, ends, (-(2**63), 2**63 - 1, 0, 1_234_567)[i]))
    async with pool.acquire() as conn:
        for account, start, (end_5h, end_week), flows in rows:
            await conn.execute(
                "INSERT INTO quota.accounts (account_id, created_at, multiplier) VALUES ($1, $2, '1')", account, start
            )
            await conn.execute(
                """INSERT INTO quota.plan_history (event_id, account_id, effective_at, plan, period_anchor)
                   VALUES ($1, $2, $3, 'free', $3)""",
                "pc-" + account, account, start,
            )  # fmt: skip
            await conn.executemany(
                """INSERT INTO quota.windows (account_id, kind, started_at, ends_at, flows_micros)
                   VALUES ($1, $2, $3, $4, $5)""",
                [(account, "5h", start, end_5h, flows), (account, "week", start, end_week, -flows - 1)],
            )
        state = QuotaState(CATALOG.default_usd_per_flow, CATALOG.insider_multiplier)
        await state.load(conn, "quota")
    for account, start, (end_5h, end_week), flows in rows:
        assert state.accounts[account].window_5h == Window(start, end_5h, flows)
        assert state.accounts[account].weekly == Window(start, end_week, -flows - 1)
        assert state.accounts[account].window_5h.start.tzinfo is UTC  # type: ignore[union-attr]


async def test_an_account_with_open_windows_takes_well_under_1_kb(database_url: str, pool: asyncpg.Pool) -> None:
    """Python's own allocations for accounts as the memory bench generates them (each with a 5-hour, a
    weekly and a monthly window; a third on Pro, a tenth with a balance), counted by tracemalloc
    (exact, unlike the resident size): 1,250 bytes each before windows and months were packed. What
    one account adds: 5,000 accounts loaded less one partition's of them loaded (what a load holds whatever
    the number of accounts cancels out). The fifth, loaded alone as a partition taken over is, holds
    what the whole load holds for those accounts."""
    await generate_quota(database_url, 5_000, datetime.now(UTC))
    generated = [f"acc_{uuid.UUID(int=i).hex[-24:]}" for i in range(5_000)]
    part_of = {account: partition_for(account, DEFAULT_PARTITIONS) for account in generated}
    fifth = {account for account, partition in part_of.items() if partition == 0}  # about a quarter
    held, states = [], []
    for only in ({0}, None):
        state = QuotaState(CATALOG.default_usd_per_flow, CATALOG.insider_multiplier)
        async with pool.acquire() as conn:
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                await state.load(conn, "quota", only)
                held.append(tracemalloc.get_traced_memory()[0] - before)
            finally:
                tracemalloc.stop()
        states.append(state)
    part, whole = states
    assert set(part.accounts) == fifth and len(whole.accounts) >= len(generated)
    assert all(part.accounts[a] == whole.accounts[a] for a in fifth)
    assert all(whole.accounts[a].window_5h and whole.accounts[a].weekly and whole.accounts[a].months for a in generated)
    assert sum(len(whole.accounts[a].segments) == 2 for a in generated) == len(generated[::3])  # a third on Pro
    per_account = (held[1] - held[0]) / (len(generated) - len(fifth))
    assert per_account < 900, f"{per_account:.0f} bytes per account"
