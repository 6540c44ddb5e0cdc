"""Each projection's apply() driven with batches against a real Postgres: no NATS, no services.
What the tables and the service's memory hold after a batch, whatever the batches' sizes."""

import uuid
from datetime import timedelta
from fractions import Fraction
from typing import Any

import asyncpg

from libs.clock import ManualClock
from proto.v1 import (
    AccountCreated,
    AccountSuspended,
    BalanceToppedUp,
    FlowRateChanged,
    InsiderStatusSet,
    KeyCreated,
    MultiplierChanged,
    PaymentRecorded,
    PlanChangeCancelled,
    PlanChanged,
    RefundRequested,
    RefundSucceeded,
    UsageRecorded,
)
from services.billing.projection import BillingProjection
from services.ingress.directory import Directory
from services.ingress.projection import IngressProjection
from services.keys.projection import KeysProjection
from services.keys.registry import KeyRegistry
from services.quota.domain.windows import FIVE_HOURS
from services.quota.projection import QuotaProjection, QuotaState
from tests.component.conftest import Feed

RATE = Fraction(1, 100)


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


async def test_billing_history_ledger_and_costs_from_one_batch(pool: asyncpg.Pool, clock: ManualClock) -> None:
    feed, account = Feed(pool, BillingProjection(metered=False)), ids()
    payment = PaymentRecorded(event_id=ids(), account_id=account, occurred_at=clock.now(), payment_ref="p-" + account,
                              plan="pro", amount_micros=20_000_000)  # fmt: skip
    payg = usage(account, clock, billing_mode="payg", usd_cost_micros=300_000)
    await feed.apply(
        created(account, clock), payment, to_pro(account, clock),
        BalanceToppedUp(event_id=ids(), account_id=account, occurred_at=clock.now(), amount_micros=1_000_000,
                        topup_ref="t-" + account),
        payg, payg, usage(account, clock),
    )  # fmt: skip
    kinds = await pool.fetch("SELECT kind FROM billing.history WHERE account_id = $1 ORDER BY kind", account)
    assert [r["kind"] for r in kinds] == ["payment", "plan_change", "top_up"]
    assert (
        await pool.fetchval("SELECT sum(amount_micros) FROM billing.ledger WHERE account_id = $1", account) == 700_000
    )
    costs = await pool.fetchrow(
        "SELECT calls, flows_micros, usd_micros FROM billing.costs WHERE account_id = $1", account
    )
    assert tuple(costs) == (2, 1_000_000, 310_000)


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
