"""Each projection's apply() driven with batches against a real Postgres: no NATS, no services.
What the tables and the service's memory hold after a batch, whatever the batches' sizes."""

import gc
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any

import asyncpg
import pytest

from libs.clock import ManualClock
from libs.eventlog.subjects import partition_for
from proto.v1 import (
    AccountCreated,
    AccountSuspended,
    BalanceToppedUp,
    BillingHistoryRequest,
    FlowRateChanged,
    InsiderStatusSet,
    KeyCreated,
    MultiplierChanged,
    PaymentRecorded,
    PlanChangeCancelled,
    PlanChanged,
    RefundRequested,
    RefundSucceeded,
)
from services.billing.projection import BillingProjection
from services.billing.responder import BillingResponder
from services.ingress.directory import Directory
from services.ingress.projection import IngressProjection
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.quota import windows_tables
from services.quota.app import fill_partitions
from services.quota.domain.periods import period_in
from services.quota.domain.windows import FIVE_HOURS
from services.quota.projection import QuotaProjection, UnknownAccount
from services.quota.state import QuotaState
from tests.component.conftest import T0, Feed, ids, statements, usage

RATE = Fraction(1, 100)


def created(account_id: str, clock: ManualClock) -> AccountCreated:
    return AccountCreated(event_id=ids(), account_id=account_id, occurred_at=clock.now(), name=account_id)


def to_pro(account_id: str, clock: ManualClock) -> PlanChanged:
    now = clock.now()
    return PlanChanged(
        event_id=ids(), account_id=account_id, occurred_at=now, plan="pro", previous_plan="free", period_anchor=now,
        reason="payment", paid_until=now + timedelta(days=31), payment_ref="pay-" + account_id,
    )  # fmt: skip


async def windows(pool: asyncpg.Pool, account_id: str) -> list[tuple[str, int]]:
    rows = await pool.fetch(
        "SELECT kind, flows_micros FROM quota.windows WHERE account_id = $1 ORDER BY kind, started_at", account_id
    )
    return [(r["kind"], r["flows_micros"]) for r in rows]


async def test_quota_counts_usage_once_into_windows_and_memory(pool: asyncpg.Pool, clock: ManualClock) -> None:
    state = QuotaState(RATE, clock=clock)
    feed, account = Feed(pool, QuotaProjection(state)), ids()
    await feed.apply(created(account, clock), to_pro(account, clock))
    clock.advance(timedelta(minutes=1))
    first = usage(account, clock)
    await feed.apply(first, first, usage(account, clock, 2_000_000))  # a duplicate inside the batch counts once
    await feed.apply(first)  # and in a later one
    assert await windows(pool, account) == [("5h", 3_000_000), ("month", 3_000_000), ("week", 3_000_000)]
    quota = state.accounts[account]
    assert quota.plan_at(clock.now()) == "pro"
    assert quota.window_5h is not None and quota.window_5h.flows == 3_000_000
    clock.advance(FIVE_HOURS + timedelta(minutes=1))  # a new 5-hour window, the same week and month
    await feed.apply(usage(account, clock, 500_000))
    assert await windows(pool, account) == [("5h", 3_000_000), ("5h", 500_000), ("month", 3_500_000),
                                            ("week", 3_500_000)]  # fmt: skip


async def test_quota_memory_reloaded_from_its_tables_equals_memory_applied_live(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    """The ManualClock decides which months load() reads: the service's clock, not Postgres's now()."""
    live = QuotaState(RATE, clock=clock)
    feed, account = Feed(pool, QuotaProjection(live)), ids()
    await feed.apply(created(account, clock), to_pro(account, clock), usage(account, clock))
    await feed.apply(MultiplierChanged(event_id=ids(), account_id=account, occurred_at=clock.now(), multiplier="2"),
                     BalanceToppedUp(event_id=ids(), account_id=account, occurred_at=clock.now(),
                                     amount_micros=5_000_000, topup_ref="t-" + account),
                     usage(account, clock, billing_mode="payg", usd_cost_micros=1_000_000))  # fmt: skip
    reloaded = QuotaState(RATE, clock=clock)
    async with pool.acquire() as conn:
        await reloaded.load(conn, "quota")
    again, before = reloaded.accounts[account], live.accounts[account]
    assert (again.segments, again.window_5h, again.weekly, again.months, again.balance) == (
        before.segments, before.window_5h, before.weekly, before.months, before.balance,
    )  # fmt: skip
    assert again.multiplier.at(clock.now()) == before.multiplier.at(clock.now()) == 2
    assert reloaded.accounts[account].balance == 4_000_000

    much_later = QuotaState(RATE, clock=ManualClock(clock.now() + timedelta(days=100)))
    async with pool.acquire() as conn:
        await much_later.load(conn, "quota")
    assert much_later.accounts[account].months == {}  # months long past are not kept in memory


async def test_quota_a_cancelled_plan_change_counts_the_months_again(pool: asyncpg.Pool, clock: ManualClock) -> None:
    state = QuotaState(RATE, clock=clock)
    feed, account = Feed(pool, QuotaProjection(state)), ids()
    await feed.apply(created(account, clock))
    clock.advance(timedelta(days=3))
    change = to_pro(account, clock)
    await feed.apply(change, usage(account, clock))
    assert state.accounts[account].plan_at(clock.now()) == "pro"
    await feed.apply(
        PlanChangeCancelled(event_id=ids(), account_id=account, occurred_at=clock.now(), plan_change_id=change.event_id)
    )
    assert state.accounts[account].plan_at(clock.now()) == "free"
    months = [flows for kind, flows in await windows(pool, account) if kind == "month"]
    assert months == [1_000_000]


async def test_quota_releases_the_reservation_of_the_usage_it_applied(pool: asyncpg.Pool, clock: ManualClock) -> None:
    state = QuotaState(RATE, clock=clock)
    feed, account = Feed(pool, QuotaProjection(state)), ids()
    await feed.apply(created(account, clock))
    state.reservations.hold(account, "r1", 5_000_000, clock.now())
    assert state.reservations.total(account) == 5_000_000
    await feed.apply(usage(account, clock, reservation_id="r1"))
    assert state.reservations.total(account) == 0


async def test_ingress_directory_changes_after_commit(pool: asyncpg.Pool, clock: ManualClock) -> None:
    directory = Directory(RATE)
    feed, account = Feed(pool, IngressProjection(directory)), ids()
    rate = FlowRateChanged(event_id=ids(), occurred_at=clock.now(), usd_per_flow="0.02")
    applied = await feed.apply(created(account, clock), usage(account, clock), rate)
    assert [type(a.event).__name__ for a in applied] == ["AccountCreated", "FlowRateChanged"]  # no usage
    assert account in directory.accounts
    assert await pool.fetchval("SELECT name FROM ingress.accounts WHERE account_id = $1", account) == account


async def test_keys_last_use_counts_only_use_after_the_key_existed(pool: asyncpg.Pool, clock: ManualClock) -> None:
    registry = KeyRegistry()
    feed, account, key_id = Feed(pool, KeysProjection(registry)), ids(), ids()
    early = usage(account, clock, key_id=key_id)
    clock.advance(timedelta(minutes=1))
    key = KeyCreated(event_id=ids(), account_id=account, occurred_at=clock.now(), key_id=key_id, name="k",
                     kind="subscription", prefix="sk-ss-v1-", last4="abcd", key_hash="h" * 64)  # fmt: skip
    await feed.apply(early, key)
    assert await pool.fetchval("SELECT last_used_at FROM keys.keys WHERE key_id = $1", key_id) is None
    clock.advance(timedelta(minutes=1))
    await feed.apply(usage(account, clock, key_id=key_id), usage(ids(), clock, key_id=key_id))  # another account's
    assert await pool.fetchval("SELECT last_used_at FROM keys.keys WHERE key_id = $1", key_id) == clock.now()
    await feed.apply(AccountSuspended(event_id=ids(), account_id=account, occurred_at=clock.now(), reason="abuse"))
    assert await pool.fetchval("SELECT suspended FROM keys.access WHERE account_id = $1", account) is True


async def test_billing_history_and_costs_from_one_batch_with_the_balance_quota_owns(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    """billing keeps no PAYG ledger: its history reports the balance of quota, which owns it (it
    admits PAYG calls against it). The same events fed to both: history and costs from billing's
    tables, the balance from quota's memory (top-up less PAYG usage, each usage counted once)."""
    account, state = ids(), QuotaState(RATE, clock=clock)
    billing, quota = Feed(pool, BillingProjection(metered=False)), Feed(pool, QuotaProjection(state))
    payment = PaymentRecorded(event_id=ids(), account_id=account, occurred_at=clock.now(), payment_ref="p-" + account,
                              plan="pro", amount_micros=20_000_000)  # fmt: skip
    payg = usage(account, clock, billing_mode="payg", usd_cost_micros=300_000)
    events = (
        created(account, clock), payment, to_pro(account, clock),
        BalanceToppedUp(event_id=ids(), account_id=account, occurred_at=clock.now(), amount_micros=1_000_000,
                        topup_ref="t-" + account),
        payg, payg, usage(account, clock),
    )  # fmt: skip
    await billing.apply(*events)
    await quota.apply(*events)
    assert await pool.fetchval("SELECT to_regclass('billing.ledger')") is None
    kinds = await pool.fetch("SELECT kind FROM billing.history WHERE account_id = $1 ORDER BY kind", account)
    assert [r["kind"] for r in kinds] == ["payment", "plan_change", "top_up"]
    costs = await pool.fetchrow(
        "SELECT calls, flows_micros, usd_micros FROM billing.costs WHERE account_id = $1", account
    )
    assert tuple(costs) == (2, 1_000_000, 310_000)

    async def balance_of(account_id: str) -> int:  # what billing's app asks quota.status for
        return int(state.accounts[account_id].balance)

    history = await BillingResponder(pool, "billing", balance_of, clock=clock).history(
        BillingHistoryRequest(account_id=account, limit=10)
    )
    assert history.balance_micros == 700_000
    assert [e.kind for e in history.entries].count("top_up") == 1


async def test_refund_usage_and_settlement(pool: asyncpg.Pool, clock: ManualClock) -> None:
    from services.refund.projection import RefundProjection

    feed, account, refund_id = Feed(pool, RefundProjection()), ids(), ids()
    payment = PaymentRecorded(event_id=ids(), account_id=account, occurred_at=clock.now(), payment_ref="p-" + account,
                              plan="pro", amount_micros=20_000_000)  # fmt: skip
    await feed.apply(payment, to_pro(account, clock), usage(account, clock))
    assert await pool.fetchval("SELECT seq FROM refund.usage WHERE account_id = $1", account) == feed.seq
    requested = RefundRequested(
        event_id=ids(), account_id=account, occurred_at=clock.now(), refund_id=refund_id,
        payment_ref=payment.payment_ref, plan="pro", paid_at=payment.occurred_at, cutoff_seq=feed.seq,
        pending_reservations=[], paid_micros=20_000_000,
        usage_micros=10_000, refunded_before_micros=0, fee_micros=0, amount_micros=19_990_000,
    )  # fmt: skip
    succeeded = RefundSucceeded(
        event_id=ids(), account_id=account, occurred_at=clock.now(), refund_id=refund_id, payout_id="po-1",
        usage_micros=10_000, refunded_before_micros=0, fee_micros=0, amount_micros=19_990_000,
    )  # fmt: skip
    await feed.apply(requested, succeeded, succeeded)
    assert await pool.fetchval("SELECT status FROM refund.refunds WHERE refund_id = $1", refund_id) == "succeeded"


async def test_ingress_and_quota_load_the_same_rate_book_they_applied(pool: asyncpg.Pool, clock: ManualClock) -> None:
    """Both price calls: what each reloads from its tables (libs/pricing/ratebook.py) prices as live."""
    directory, state = Directory(RATE), QuotaState(RATE, clock=clock)
    ingress, quota, account = Feed(pool, IngressProjection(directory)), Feed(pool, QuotaProjection(state)), ids()
    start = clock.now()
    clock.advance(timedelta(hours=1))
    events = (
        created(account, ManualClock(start)),
        MultiplierChanged(event_id=ids(), account_id=account, occurred_at=clock.now(), multiplier="3/2"),
        InsiderStatusSet(event_id=ids(), account_id=account, occurred_at=clock.now(), insider=True),
        FlowRateChanged(event_id=ids(), occurred_at=clock.now(), usd_per_flow="1/40"),
    )
    await ingress.apply(*events)
    await quota.apply(*events)
    fresh_directory, fresh_state = Directory(RATE), QuotaState(RATE, clock=clock)
    async with pool.acquire() as conn:
        await fresh_directory.load(conn, "ingress")
        await fresh_state.load(conn, "quota")
    for when in (start, clock.now()):  # the multiplier at creation, and since its change
        live = directory.multiplier(directory.accounts[account], when)
        assert fresh_directory.multiplier(fresh_directory.accounts[account], when) == live
        assert fresh_state.multiplier(fresh_state.accounts[account], when) == live
    now = clock.now()  # the Flow rate is everyone's: other tests of the module changed it before
    assert fresh_directory.flow_rate.at(now) == fresh_state.flow_rate.at(now) == directory.flow_rate.at(now)
    live = (directory.flow_rate.at(now), directory.multiplier(directory.accounts[account], now))
    assert live == (Fraction(1, 40), Fraction(3, 2))
    assert fresh_state.accounts[account].insider.at(clock.now())


# What one batch costs a projection in statements (issue 14: projections that keep up with ingest), and
# that the work saved changes nothing of what the batch leaves in the tables and in memory; what quota's
# memory shares between accounts (issue 14: memory at scale).


async def test_quota_writes_on_time_usage_of_any_number_of_accounts_with_two_statements(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    """The usage rows, then every window it changed (5-hour, week, month; aggregated per account and
    window in memory) in one upsert: the windows already open are known from memory, not read. Each
    sends its rows as one parameter (asyncpg checks every element of every array it encodes)."""
    state = QuotaState(RATE, clock=clock)
    feed, accounts = Feed(pool, QuotaProjection(state)), [ids() for _ in range(20)]
    await feed.apply(*(e for a in accounts for e in (created(a, clock), to_pro(a, clock))))
    clock.advance(timedelta(minutes=1))
    await feed.apply(*(usage(a, clock) for a in accounts))  # opens each account's windows
    clock.advance(timedelta(minutes=1))
    sent = await statements(pool, feed, *(usage(a, clock, 500_000) for a in accounts for _ in range(3)))
    assert [" ".join(s.split()[:3]) for s in sent] == ["INSERT INTO quota.usage", "INSERT INTO quota.windows"]
    assert not any("$2" in s for s in sent)  # the rows as ONE array of the table's row type, not one per column
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


async def test_quota_loads_a_partition_s_accounts_only_as_the_whole_load_has_them(
    pool: asyncpg.Pool, clock: ManualClock
) -> None:
    """A take-over reads the partition's accounts by their partition column (filled by the projection,
    and for older rows by quota.partition_for at start): exactly those accounts, each as a load of
    every account has it (plans, windows, months, balance, multiplier, insider)."""
    state = QuotaState(RATE, clock=clock)
    feed, accounts = Feed(pool, QuotaProjection(state, partitions=4)), [ids() for _ in range(40)]
    for i, account in enumerate(accounts):
        await feed.apply(created(account, clock), to_pro(account, clock), usage(account, clock, flows=1_000 * (i + 1)))
        await feed.apply(BalanceToppedUp(event_id=ids(), account_id=account, occurred_at=clock.now(),
                                         amount_micros=5_000_000, topup_ref=ids()))  # fmt: skip
        if i % 3 == 0:
            await feed.apply(MultiplierChanged(event_id=ids(), account_id=account, occurred_at=clock.now(),
                                               multiplier="3"))  # fmt: skip
        if i % 4 == 0:
            await feed.apply(InsiderStatusSet(event_id=ids(), account_id=account, occurred_at=clock.now(),
                                              insider=True))  # fmt: skip
    older = ids()  # an account projected before the column was: quota fills its partition at start
    await pool.execute("INSERT INTO quota.accounts (account_id, created_at) VALUES ($1, $2)", older, clock.now())
    async with pool.acquire() as conn:
        await fill_partitions(conn, "quota", 4)
    assert await pool.fetchval("SELECT partition FROM quota.accounts WHERE account_id = $1", older) == partition_for(
        older, 4
    )
    whole = QuotaState(RATE, clock=clock)
    async with pool.acquire() as conn:
        await whole.load(conn, "quota")
    for partition in range(4):
        mine = {a for a in [*accounts, older] if partition_for(a, 4) == partition}
        assert mine, "every partition has accounts: the check has teeth"
        loaded = QuotaState(RATE, clock=clock)
        async with pool.acquire() as conn:
            await loaded.load(conn, "quota", {partition})
        assert all(partition_for(a, 4) == partition for a in loaded.accounts)  # other tests' accounts too
        assert mine <= set(loaded.accounts)
        for account in mine:
            a, b = loaded.accounts[account], whole.accounts[account]
            assert (a.segments, a.window_5h, a.weekly, a.months, a.balance) == (
                b.segments, b.window_5h, b.weekly, b.months, b.balance,
            )  # fmt: skip
            at = clock.now()
            assert (loaded.multiplier(a, at), a.insider.at(at)) == (whole.multiplier(b, at), b.insider.at(at))


@pytest.mark.parametrize("partitions", [4, 7, 16])
async def test_the_sql_partition_function_is_partition_for(pool: asyncpg.Pool, partitions: int) -> None:
    """quota.partition_for (what fills the partition of accounts from before the column) computes
    the stream's partition exactly as libs/eventlog/subjects.partition_for does (checked there against
    a real nats-server), for account ids of every shape the log allows, and beyond."""
    accounts = [f"acc_{uuid.uuid4().hex[:12]}" for _ in range(300)] + ["_system", "a", "Z-9_x", "x" * 64, "é-ü"]
    rows = await pool.fetch("SELECT a, quota.partition_for(a, $2) AS p FROM unnest($1::text[]) AS a", accounts,
                            partitions)  # fmt: skip
    assert {row["a"]: row["p"] for row in rows} == {a: partition_for(a, partitions) for a in accounts}
    assert len({row["p"] for row in rows}) == partitions


async def test_billing_counts_a_batch_of_usage_once_with_one_statement(pool: asyncpg.Pool, clock: ManualClock) -> None:
    """The costs, the abuse evidence and the PAYG spend of a batch of usage: one statement, each
    event counted once (a duplicate in the batch, or one counted in an earlier batch, is not), by
    UTC day whatever offset the event time came with, clients without a hash left out."""
    projection, feed = BillingProjection(metered=False), Feed(pool, BillingProjection(metered=False))
    a, b = ids(), ids()
    counted_before = usage(a, clock, client_hash="c1")
    await feed.apply(counted_before)
    late_evening = datetime(2026, 3, 3, 2, 0, tzinfo=timezone(timedelta(hours=5)))  # 2026-03-02 21:00 UTC
    first = usage(a, clock, flows=2_000_000, client_hash="c1", key_id="k1")
    payg = usage(b, ManualClock(late_evening), billing_mode="payg", usd_cost_micros=300_000, client_hash="c2",
                 agent_hash="ua", model="openai/gpt-5-mini")  # fmt: skip
    events = (
        first, first, counted_before, payg, usage(a, clock, client_hash=""),
        usage(b, ManualClock(late_evening), billing_mode="payg", usd_cost_micros=50_000, model="openai/gpt-5-mini"),
    )  # fmt: skip
    sent = await statements(pool, Feed(pool, projection), *events)
    assert [s.split(" (")[0] for s in sent] == ["WITH batch AS"]

    costs = await pool.fetch(
        "SELECT account_id, day, model, calls, flows_micros, usd_micros FROM billing.costs WHERE account_id = ANY($1)"
        " ORDER BY account_id = $2 DESC", [a, b], a,
    )  # fmt: skip
    assert [tuple(r) for r in costs] == [
        (a, clock.now().date(), "deepseek/deepseek-chat", 3, 4_000_000, 30_000),  # 1 before, `first` and the ""
        (b, date(2026, 3, 2), "openai/gpt-5-mini", 2, 0, 350_000),
    ]
    clients = await pool.fetch(
        "SELECT account_id, key_id, client_hash, agent_hash, calls FROM billing.abuse_clients"
        " WHERE account_id = ANY($1) ORDER BY client_hash, key_id", [a, b],
    )  # fmt: skip
    assert [tuple(r) for r in clients] == [(a, "", "c1", "", 1), (a, "k1", "c1", "", 1), (b, "", "c2", "ua", 1)]
    hours = await pool.fetch("SELECT account_id, calls, flows_micros FROM billing.abuse_hours WHERE account_id = $1", a)
    assert [tuple(r) for r in hours] == [(a, 3, 4_000_000)]

    spend: dict[str, int] = defaultdict(int)
    again = usage(b, clock, billing_mode="payg", usd_cost_micros=70_000, model="openai/gpt-5-mini")
    async with pool.acquire() as conn, conn.transaction():
        await projection._count_usage(conn, [payg, again, again, usage(a, clock)], spend)
    assert dict(spend) == {"openai/gpt-5-mini": 70_000}  # `payg` was counted in the batch before


async def test_quota_works_an_accounts_period_out_once_for_batches_in_it(
    pool: asyncpg.Pool, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kept period serves every later batch that falls in it: working a period out (period_at, a
    bisect and three month additions) was a fifth of quota's apply, once per account and batch while
    the kept one was never found equal (a list of the plan history compared with its tuple)."""
    worked_out: list[datetime] = []

    def counted(segments: Any, i: int, when: datetime) -> Any:
        worked_out.append(when)
        return period_in(segments, i, when)

    monkeypatch.setattr(windows_tables, "period_in", counted)
    feed, account = Feed(pool, QuotaProjection(QuotaState(RATE, clock=clock))), ids()
    await feed.apply(created(account, clock))
    for _ in range(3):
        clock.advance(timedelta(hours=1))
        await feed.apply(usage(account, clock))
    assert len(worked_out) == 1


async def test_quota_calls_after_a_plan_change_count_in_the_new_period(pool: asyncpg.Pool, clock: ManualClock) -> None:
    """quota keeps each account's latest monthly period from one batch to the next; a plan change
    cuts the periods anew, and the calls after it count in the new plan's period, not the kept one."""
    state = QuotaState(RATE, clock=clock)
    feed, account = Feed(pool, QuotaProjection(state)), ids()
    await feed.apply(created(account, clock))
    clock.advance(timedelta(days=1))
    await feed.apply(usage(account, clock, 1_000_000))  # in the Free period from T0: kept
    clock.advance(timedelta(days=9))
    await feed.apply(to_pro(account, clock))
    changed_at = clock.now()
    clock.advance(timedelta(days=1))
    await feed.apply(usage(account, clock, 2_000_000))  # inside the kept period's dates, but on Pro
    months = await pool.fetch(
        "SELECT started_at, flows_micros FROM quota.windows WHERE account_id = $1 AND kind = 'month'"
        " ORDER BY started_at", account,
    )  # fmt: skip
    assert [(r["started_at"], r["flows_micros"]) for r in months] == [(T0, 1_000_000), (changed_at, 2_000_000)]
    assert state.accounts[account].months == {T0: 1_000_000, changed_at: 2_000_000}
