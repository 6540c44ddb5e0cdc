"""Plan changes by payment: upgrades at once, downgrades at the end of the paid month, Free after
a month that ends unpaid."""

from datetime import UTC, datetime, timedelta

import pytest

from libs.months import add_months
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected


async def test_upgrade_at_once_and_downgrade_at_period_end(stack: Stack) -> None:
    account = await stack.create_account()
    pro = await stack.pay(account["account_id"], "pro", "20.00")
    assert (await stack.usage(account["key"]))["plan"] == "pro"
    upgrade = await stack.pay(account["account_id"], "max", "100.00")
    usage = await stack.usage(account["key"])  # new caps at once
    assert usage["plan"] == "max" and usage["window_5h"]["limit_flows"] == 300
    assert upgrade["effective_at"] == upgrade["paid_at"] and upgrade["previous_plan"] == "pro"
    assert pro["paid_until"] is not None

    downgrade = await stack.pay(account["account_id"], "pro", "20.00")
    assert downgrade["effective_at"] == upgrade["paid_until"]  # when the month paid for ends
    assert downgrade["previous_plan"] == "max"
    assert (await stack.usage(account["key"]))["plan"] == "max"  # still what was paid for

    async def scheduled() -> bool:
        _, history = await stack.http("GET", "/v1/billing/history", token=account["key"])
        return any(
            e["type"] == "plan_change" and e["plan"] == "pro" and e["occurred_at"] == downgrade["effective_at"]
            for e in history["data"]
        )

    await eventually(scheduled)  # the history shows the downgrade, dated when it takes effect


async def test_a_month_that_ends_unpaid_drops_the_account_to_free(stack: Stack) -> None:
    account = await stack.create_account()
    paid_at = datetime.now(UTC) - timedelta(days=40)
    payment = await stack.pay(account["account_id"], "pro", "20.00", paid_at=paid_at.isoformat())
    assert datetime.fromisoformat(payment["paid_until"]) == add_months(paid_at, 1)
    usage = await stack.usage(account["key"])
    assert usage["plan"] == "free" and usage["window_5h"]["limit_flows"] == 5
    renewal = await stack.pay(account["account_id"], "pro", "20.00")
    assert renewal["effective_at"] == renewal["paid_at"]
    assert (await stack.usage(account["key"]))["plan"] == "pro"
