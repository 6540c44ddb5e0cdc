"""quota's count of a batch's subscription usage (services/quota/windows_tables.py) on its usual path:
every call of an account in its open 5-hour and weekly windows and in its latest monthly period,
worked per account; what it writes and keeps, and the Flows it counts for the metrics by plan."""

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import asyncpg
import pytest

from libs.clock import ManualClock
from proto.v1 import AccountCreated, PlanChanged, UsageRecorded
from services.quota import metrics
from services.quota.domain import admission, compact
from services.quota.domain.windows import FIVE_HOURS, ONE_WEEK
from services.quota.projection import QuotaProjection
from services.quota.state import QuotaState
from tests.component.conftest import Feed

MODEL = "deepseek/deepseek-chat"


def ids() -> str:
    return uuid.uuid4().hex[:12]


def usage(account_id: str, at: datetime, flows: int, model: str = MODEL) -> UsageRecorded:
    return UsageRecorded(
        event_id=ids(), account_id=account_id, occurred_at=at, model=model, input_tokens=1000, output_tokens=500,
        billing_mode="subscription", usd_cost_micros=10_000, flows_micros=flows, usd_per_flow="0.01", multiplier="1",
    )  # fmt: skip


def on_pro(account_id: str, at: datetime, paid_until: datetime) -> list[Any]:
    return [
        AccountCreated(event_id=ids(), account_id=account_id, occurred_at=at, name=account_id),
        PlanChanged(
            event_id=ids(), account_id=account_id, occurred_at=at, plan="pro", previous_plan="free",
            period_anchor=at, reason="payment", paid_until=paid_until, payment_ref="pay-" + account_id,
        ),
    ]  # fmt: skip


async def rows(pool: asyncpg.Pool, account_id: str) -> list[tuple[str, datetime, datetime, int]]:
    found = await pool.fetch(
        "SELECT kind, started_at, ends_at, flows_micros FROM quota.windows WHERE account_id = $1 ORDER BY kind",
        account_id,
    )
    return [(r["kind"], r["started_at"], r["ends_at"], r["flows_micros"]) for r in found]


async def test_quota_adds_a_batch_in_the_open_windows_per_account_without_packing_a_window(
    pool: asyncpg.Pool, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls inside an account's open windows add their Flows to the packed windows as they are: no
    window is packed again from its datetimes (pack_window, two datetime subtractions and a division
    per chain and account, was the usual batch's largest single item), and rows and memory agree."""
    state = QuotaState(Fraction(1, 100), clock=clock)
    feed, start = Feed(pool, QuotaProjection(state)), clock.now()
    accounts = [ids() for _ in range(3)]
    for account in accounts:
        await feed.apply(*on_pro(account, start, start + timedelta(days=31)))
    await feed.apply(*(usage(a, start + timedelta(minutes=1), 1_000_000) for a in accounts))  # opens the windows
    packed: list[object] = []
    pack_window = compact.pack_window

    def counted(window: Any, length: timedelta) -> Any:
        packed.append(window)
        return pack_window(window, length)

    monkeypatch.setattr(admission, "pack_window", counted)
    monkeypatch.setattr(compact, "pack_window", counted)
    later = start + timedelta(hours=1)
    await feed.apply(
        usage(accounts[0], later, 2_000_000), usage(accounts[1], later, 3_000_000),
        usage(accounts[0], later + timedelta(minutes=5), 4_000_000),
        usage(accounts[2], later, 0),  # no Flows: nothing to write to the rolling windows
    )  # fmt: skip
    assert packed == []
    opened = start + timedelta(minutes=1)
    for account, flows in zip(accounts, (7_000_000, 4_000_000, 1_000_000), strict=True):
        assert await rows(pool, account) == [
            ("5h", opened, opened + FIVE_HOURS, flows),
            ("month", start, start.replace(month=start.month + 1), flows),
            ("week", opened, opened + ONE_WEEK, flows),
        ]
        quota = state.accounts[account]
        assert quota.window_5h is not None and quota.window_5h.flows == flows
        assert quota.weekly is not None and quota.weekly.flows == flows
        assert quota.months == {start: flows}
        assert isinstance(quota.packed_5h, int) and isinstance(quota.packed_weekly, int)


async def test_quota_counts_a_batchs_calls_after_the_paid_plan_ran_out_as_free(
    pool: asyncpg.Pool, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All of a batch in the kept period, some calls before the paid plan's end and some after: the
    metric counts each call under the plan in force when it was made. A rebuild counts none."""
    counted: dict[tuple[str, str], float] = defaultdict(float)

    class Recorder:
        def add(self, flows: float, labels: dict[str, str]) -> None:
            counted[(labels["model"], labels["plan"])] += flows

    monkeypatch.setattr(metrics, "flows_consumed", Recorder())
    start = clock.now()
    paid_until = start + timedelta(days=10)
    for metered in (True, False):
        projection, account = QuotaProjection(QuotaState(Fraction(1, 100), clock=clock), metered=metered), ids()
        feed = Feed(pool, projection)
        await feed.apply(*on_pro(account, start, paid_until))
        await feed.apply(usage(account, paid_until - timedelta(days=1), 1_000_000))  # keeps the period
        await feed.apply(
            usage(account, paid_until - timedelta(hours=1), 2_000_000),
            usage(account, paid_until, 4_000_000, model="openai/gpt-5-mini"),
            usage(account, paid_until + timedelta(hours=1), 8_000_000),
        )
        assert projection.state.accounts[account].months == {start: 15_000_000}
    assert dict(counted) == {(MODEL, "pro"): 3.0, ("openai/gpt-5-mini", "free"): 4.0, (MODEL, "free"): 8.0}
