"""Refund rules through the HTTP API: the usage deducted is the subscription usage of the refunded
payment's own period (PAYG calls were paid from the balance already), and refunding a payment whose
plan has not started yet (a scheduled downgrade) withdraws that change and leaves the plan in force
running, instead of dropping the account to Free."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.conftest import refund_of
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected


def owner(account: dict[str, str]) -> str:
    """The credential that may change the account (a management key where accounts have one)."""
    return account.get("management_key") or account["key"]


async def calls(stack: Stack, key: str, count: int) -> list[dict[str, Any]]:
    async def listed() -> list[dict[str, Any]]:
        status, body = await stack.http("GET", "/v1/account/usage/events?limit=100", token=key)
        assert status == 200, body
        return list(body["data"]) if len(body["data"]) >= count else []

    return list(await eventually(listed))


async def test_payg_calls_and_calls_outside_the_period_are_not_deducted(stack: Stack) -> None:
    account = await stack.create_account()
    account_id, key = account["account_id"], account["key"]
    status, _ = await stack.http(
        "POST", f"/admin/v1/accounts/{account_id}/balance", token=stack.settings.admin_token,
        json={"amount_usd": "50.00"},
    )  # fmt: skip
    assert status in (200, 201)
    paid_at = datetime.now(UTC) - timedelta(hours=2)
    await stack.pay(account_id, "pro", "20.00", paid_at=paid_at.isoformat())
    before_payment = (paid_at - timedelta(hours=1)).isoformat()
    events = [
        usage_event(account_id, input_tokens=200_000, output_tokens=50_000),  # the one to deduct
        usage_event(account_id, input_tokens=400_000, output_tokens=100_000, billing_mode="payg"),
        usage_event(account_id, input_tokens=300_000, occurred_at=before_payment),  # on Free, before it
    ]
    status, body = await stack.post_usage(events)
    assert status == 202, body
    cost = {c["input_tokens"]: Decimal(c["usd_cost"]) for c in await calls(stack, key, 3)}
    on_plan = cost[200_000]
    assert cost[400_000] > cost[300_000] > on_plan > 0  # the calls not to deduct are the larger ones

    status, preview = await stack.http("GET", "/v1/refunds/preview", token=key)
    assert status == 200 and preview["eligible"], preview
    assert Decimal(preview["usage_usd"]) == on_plan  # not the PAYG call, not the call made before it was paid
    status, requested = await stack.http("POST", "/v1/refunds", token=owner(account))
    assert status == 202, requested
    refund = await refund_of(stack, key, requested["refund_id"])
    assert refund["status"] == "succeeded" and Decimal(refund["usage_usd"]) == on_plan, refund
    refundable = Decimal("20.00") - on_plan
    assert Decimal(refund["amount_usd"]) == (refundable * Decimal("0.95")).quantize(Decimal("0.01"), "ROUND_HALF_UP")


async def test_refunding_a_scheduled_downgrade_keeps_the_plan_in_force(stack: Stack) -> None:
    account = await stack.create_account()
    account_id, key = account["account_id"], account["key"]
    upgrade = await stack.pay(account_id, "max", "100.00")
    ref = f"downgrade-{account_id}"
    downgrade = await stack.pay(account_id, "pro", "20.00", ref=ref)  # from the end of the Max month
    assert downgrade["effective_at"] == upgrade["paid_until"]
    status, body = await stack.post_usage([usage_event(account_id, input_tokens=200_000)])  # on Max, not Pro's
    assert status == 202, body
    await calls(stack, key, 1)

    status, preview = await stack.http("GET", "/v1/refunds/preview", token=key)
    assert status == 200 and preview["eligible"], preview
    assert (preview["plan"], preview["usage_usd"], preview["amount_usd"]) == ("pro", "0.00", "19.00")
    status, requested = await stack.http("POST", "/v1/refunds", token=owner(account))
    assert status == 202, requested
    refund = await refund_of(stack, key, requested["refund_id"])
    assert (refund["status"], refund["plan"], refund["amount_usd"]) == ("succeeded", "pro", "19.00"), refund

    usage = await stack.usage(key)  # quota's view: Max runs on, no drop to Free
    assert usage["plan"] == "max" and usage["window_5h"]["limit_flows"] == 300

    async def withdrawn() -> bool:  # the scheduled change is gone: from billing's history and quota's plans
        _, history = await stack.http("GET", "/v1/billing/history", token=key)
        scheduled = [e for e in history["data"] if e["type"] == "plan_change" and e["plan"] == "pro"]
        refunds = [e for e in history["data"] if e["type"] == "refund"]
        conn = await stack.db()
        try:
            plans = await conn.fetch("SELECT plan FROM quota.plan_history WHERE account_id = $1", account_id)
        finally:
            await conn.close()
        return scheduled == [] and len(refunds) == 1 and sorted(r["plan"] for r in plans) == ["free", "max"]

    await eventually(withdrawn, within=30)
    again = await stack.pay(account_id, "pro", "20.00", ref=ref)  # the provider's webhook, delivered again
    assert again["effective_at"] == downgrade["effective_at"]  # answered as recorded: nothing new
    assert await withdrawn()  # and nothing scheduled again
    assert (await stack.usage(key))["plan"] == "max"
    status, again = await stack.http("GET", "/v1/refunds/preview", token=key)
    assert (status, again["reason"]) == (200, "already_refunded"), again
