"""Plan changes by payment: upgrades at once, downgrades at the end of the paid month, Free after
a month that ends unpaid; concurrent payments decided one after the other; a payment or top-up
sent again recorded once."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from libs.months import add_months
from libs.pricing.money import to_micros
from proto.v1 import RecordPayment
from services.billing.domain import Subscription, record_payment, subscription_at
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected
PRICES_USD = {"pro": "20.00", "max": "100.00", "ultra": "200.00"}
PRICES = {"free": 0, **{plan: to_micros(usd) for plan, usd in PRICES_USD.items()}}


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


async def test_concurrent_payments_each_decide_from_the_one_before(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    plans = ["pro", "max", "pro", "ultra", "max"]  # upgrades, renewals and downgrades, all at once
    replies = await asyncio.gather(
        *(stack.pay(account_id, plan, PRICES_USD[plan], ref=f"concurrent-{i}") for i, plan in enumerate(plans))
    )
    # billing decides one payment of the account at a time, dating each by its clock: replaying
    # the rules in that order, each from the outcome of those before it, gives every answer.
    changes: list[Subscription] = []
    for reply in sorted(replies, key=lambda r: datetime.fromisoformat(r["paid_at"])):
        paid_at = datetime.fromisoformat(reply["paid_at"])
        command = RecordPayment(
            account_id=account_id, plan=reply["plan"], amount_micros=to_micros(PRICES_USD[reply["plan"]]),
            payment_ref=reply["payment_ref"],
        )  # fmt: skip
        _, change = record_payment(command, changes, PRICES, paid_at)
        assert reply["previous_plan"] == change.previous_plan, reply
        assert datetime.fromisoformat(reply["effective_at"]) == change.occurred_at, reply
        assert datetime.fromisoformat(reply["paid_until"]) == change.paid_until, reply
        changes.append(Subscription(change.occurred_at, change.plan, change.paid_until))
    in_force = subscription_at(changes, datetime.now(UTC))
    assert in_force is not None and (await stack.usage(account["key"]))["plan"] == in_force.plan

    async def recorded() -> bool:
        _, history = await stack.http("GET", "/v1/billing/history", token=account["key"])
        kinds = [e["type"] for e in history["data"]]
        return kinds.count("payment") == 5 and kinds.count("plan_change") == 5

    await eventually(recorded)


async def test_a_payment_sent_again_is_recorded_once(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    first, again = await asyncio.gather(
        stack.pay(account_id, "pro", "20.00", ref="webhook-1"), stack.pay(account_id, "pro", "20.00", ref="webhook-1")
    )
    assert first == again and first["previous_plan"] == "free"
    await stack.pay(account_id, "max", "100.00")
    late = await stack.pay(account_id, "pro", "20.00", ref="webhook-1")  # after another payment: still the same
    assert late == first

    status, reply = await stack.http(
        "POST", f"/admin/v1/accounts/{account_id}/payments", token=stack.settings.admin_token,
        json={"plan": "max", "amount_usd": "100.00", "payment_ref": "webhook-1"},
    )  # fmt: skip
    assert (status, reply["error"]["code"], reply["error"]["field"]) == (409, "ref_conflict", "payment_ref")

    async def counted_once() -> bool:
        _, history = await stack.http("GET", "/v1/billing/history", token=account["key"])
        refs = [e["reference"] for e in history["data"] if e["type"] == "payment"]
        return refs.count("webhook-1") == 1 and len(refs) == 2

    await eventually(counted_once)
    assert (await stack.usage(account["key"]))["plan"] == "max"


async def test_a_top_up_sent_again_is_credited_once(stack: Stack) -> None:
    account = await stack.create_account()
    path = f"/admin/v1/accounts/{account['account_id']}/balance"
    admin = stack.settings.admin_token
    for _ in range(2):
        status, reply = await stack.http("POST", path, token=admin, json={"amount_usd": "5.00", "topup_ref": "t-1"})
        assert (status, reply["topup_ref"]) == (201, "t-1"), reply
    status, reply = await stack.http("POST", path, token=admin, json={"amount_usd": "6.00", "topup_ref": "t-1"})
    assert (status, reply["error"]["field"]) == (409, "topup_ref")
    status, reply = await stack.http("POST", path, token=admin, json={"amount_usd": "0"})
    assert (status, reply["error"]["field"]) == (400, "amount_usd")
    assert (await stack.usage(account["key"]))["extra_usage"]["balance_usd"] == "5.000000"


async def test_what_billing_refuses_is_a_400_naming_the_field(stack: Stack) -> None:
    account = await stack.create_account()
    path = f"/admin/v1/accounts/{account['account_id']}/payments"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    for body, field in [
        ({"plan": "free", "amount_usd": "0", "payment_ref": "r"}, "plan"),
        ({"plan": "pro", "amount_usd": "-20", "payment_ref": "r"}, "amount_usd"),
        ({"plan": "pro", "amount_usd": "20", "payment_ref": "r", "paid_at": tomorrow}, "paid_at"),
    ]:
        status, reply = await stack.http("POST", path, token=stack.settings.admin_token, json=body)
        assert (status, reply["error"]["code"], reply["error"]["field"]) == (400, "invalid_request", field), reply
    assert (await stack.usage(account["key"]))["plan"] == "free"
