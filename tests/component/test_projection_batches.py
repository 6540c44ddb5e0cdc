"""What one batch costs a projection in statements (issue 14: projections that keep up with ingest),
and that the work saved changes nothing of what the batch leaves in the tables and in memory; what
quota's memory shares between accounts (issue 14: memory at scale)."""

import asyncio
import gc
from datetime import timedelta

import asyncpg
import pytest

from libs.clock import ManualClock
from libs.eventlog.runner import Applied, Projection, save_checkpoint
from proto.v1 import InsiderStatusSet, KeyCreated, MultiplierChanged
from proto.v1.events import AnyEvent
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.quota.domain.windows import FIVE_HOURS
from services.quota.projection import QuotaProjection, QuotaState, UnknownAccount
from tests.component.conftest import Feed
from tests.component.test_projections import RATE, created, ids, to_pro, usage, windows


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


async def test_quota_writes_on_time_usage_of_any_number_of_accounts_with_two_statements(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    """The usage rows, then every window it changed (5-hour, week, month; aggregated per account and
    window in memory) in one upsert: the windows already open are known from memory, not read."""
    state = QuotaState(RATE, clock=clock)
    feed, accounts = Feed(pool, QuotaProjection(state)), [ids() for _ in range(20)]
    await feed.apply(*(e for a in accounts for e in (created(a, clock), to_pro(a, clock))))
    clock.advance(timedelta(minutes=1))
    await feed.apply(*(usage(a, clock) for a in accounts))  # opens each account's windows
    clock.advance(timedelta(minutes=1))
    sent = await statements(pool, feed, *(usage(a, clock, 500_000) for a in accounts for _ in range(3)))
    assert [s.split(" (")[0] for s in sent] == ["INSERT INTO quota.usage", "INSERT INTO quota.windows AS w"]
    for account in accounts:
        assert await windows(pool, account) == [("5h", 2_500_000), ("month", 2_500_000), ("week", 2_500_000)]
        memory = state.accounts[account]
        assert memory.window_5h is not None and memory.window_5h.flows == 2_500_000
        assert memory.weekly is not None and memory.weekly.flows == 2_500_000
        assert sum(memory.months.values()) == 2_500_000

    # A second 5-hour window, then a late call back in the first: only then are windows read
    clock.advance(FIVE_HOURS)
    await feed.apply(usage(accounts[0], clock, 100_000))
    late = usage(accounts[0], ManualClock(clock.now() - FIVE_HOURS), 1_000_000)
    sent = await statements(pool, feed, late, usage(accounts[1], clock, 100_000))
    assert any(s.startswith("SELECT w.account_id") for s in sent)
    assert await windows(pool, accounts[0]) == [("5h", 3_500_000), ("5h", 100_000), ("month", 3_600_000),
                                                ("week", 3_600_000)]  # fmt: skip
    assert await windows(pool, accounts[1]) == [("5h", 2_500_000), ("5h", 100_000), ("month", 2_600_000),
                                                ("week", 2_600_000)]  # fmt: skip


async def test_quota_a_batch_that_fails_leaves_the_multiplier_in_memory_as_it_was(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    """A batch's changes to an account are made on a copy that is kept only once committed: the
    multiplier history the copy shares with memory is replaced, never changed in place."""
    state = QuotaState(RATE, clock=clock)
    feed, account = Feed(pool, QuotaProjection(state)), ids()
    await feed.apply(created(account, clock))
    doubled = MultiplierChanged(event_id=ids(), account_id=account, occurred_at=clock.now(), multiplier="2")
    with pytest.raises(UnknownAccount):
        await feed.apply(doubled, usage("acc_never_created", clock))
    assert state.multiplier(state.accounts[account], clock.now()) == 1
    await feed.apply(doubled)
    assert state.multiplier(state.accounts[account], clock.now()) == 2


async def test_quota_load_shares_the_histories_that_never_changed(pool: asyncpg.Pool, clock: ManualClock) -> None:
    """At scale memory holds a million accounts: those whose multiplier never changed share one history
    per value, those never marked insiders one insider history; a change after the load gives only that
    account a history of its own. The garbage collector, paused while loading, runs again after."""
    live = QuotaState(RATE, clock=clock)
    feed, plain, other, changed = Feed(pool, QuotaProjection(live)), ids(), ids(), ids()
    await feed.apply(created(plain, clock), created(other, clock), created(changed, clock))
    await feed.apply(MultiplierChanged(event_id=ids(), account_id=changed, occurred_at=clock.now(), multiplier="3"))
    loaded = QuotaState(RATE, clock=clock)
    async with pool.acquire() as conn:
        await loaded.load(conn, "quota")
    assert gc.isenabled()
    accounts = loaded.accounts
    assert accounts[plain].multiplier is accounts[other].multiplier is not accounts[changed].multiplier
    assert accounts[plain].insider is accounts[other].insider is accounts[changed].insider
    assert [loaded.multiplier(accounts[a], clock.now()) for a in (plain, other, changed)] == [1, 1, 3]

    reloaded = QuotaProjection(loaded)
    again = Feed(pool, reloaded)
    again.seq = feed.seq
    await again.apply(
        MultiplierChanged(event_id=ids(), account_id=plain, occurred_at=clock.now(), multiplier="2"),
        InsiderStatusSet(event_id=ids(), account_id=plain, occurred_at=clock.now(), insider=True),
    )
    assert [loaded.multiplier(accounts[a], clock.now()) for a in (plain, other, changed)] == [2, 1, 3]
    assert [accounts[a].insider.at(clock.now()) for a in (plain, other)] == [True, False]


async def test_keys_load_keeps_one_str_per_name_kind_and_prefix(pool: asyncpg.Pool, clock: ManualClock) -> None:
    """At scale the registry holds a million keys: slotted, and the few names, kinds and prefixes of
    the keys one str object each, not one per key as the rows bring them."""
    account = ids()
    keys = [
        KeyCreated(event_id=ids(), account_id=account, occurred_at=clock.now(), key_id=ids(), name="default",
                   kind="subscription", prefix="sk-ss-v1-", last4="abcd", key_hash=ids() * 5)
        for _ in range(3)
    ]  # fmt: skip
    await Feed(pool, KeysProjection(KeyRegistry())).apply(*keys)
    registry = KeyRegistry()
    async with pool.acquire() as conn:
        await registry.load(conn, "keys")
    assert gc.isenabled()
    loaded = [registry.by_id[k.key_id] for k in keys]
    assert [k.key_hash for k in loaded] == [k.key_hash for k in keys]
    assert loaded[0].name is loaded[1].name is loaded[2].name
    assert loaded[0].kind is loaded[1].kind and loaded[0].prefix is loaded[2].prefix
    assert not hasattr(loaded[0], "__dict__")
