"""Admin-recorded payments through the HTTP API: an amount other than the plan's price needs an
explicit override, and a payment dated before the account existed puts the account on its plan
from the account's creation (quota shows it) while the refund window still counts from paid_at."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.stack import Stack

pytestmark = pytest.mark.connected


async def record(stack: Stack, account_id: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    status, reply = await stack.http(
        "POST", f"/admin/v1/accounts/{account_id}/payments", token=stack.settings.admin_token,
        json={"payment_ref": uuid.uuid4().hex, **body},
    )  # fmt: skip
    return status, dict(reply)


async def test_an_amount_other_than_the_price_is_refused_without_override(stack: Stack) -> None:
    account = await stack.create_account()
    account_id = account["account_id"]
    for amount in ("0.01", "25.00", "0"):
        status, reply = await record(stack, account_id, {"plan": "pro", "amount_usd": amount})
        assert status == 400, reply
        assert reply["error"]["field"] == "amount_usd" and "override" in reply["error"]["message"]  # type: ignore[index]
    assert (await stack.usage(account["key"]))["plan"] == "free"  # nothing was recorded
    _, history = await stack.http("GET", "/v1/billing/history", token=account["key"])
    assert [e for e in history["data"] if e["type"] == "payment"] == []

    status, reply = await record(stack, account_id, {"plan": "pro", "amount_usd": "25.00", "override": True})
    assert status == 201 and reply["amount_usd"] == "25.00", reply
    assert (await stack.usage(account["key"]))["plan"] == "pro"
    status, reply = await record(stack, account_id, {"plan": "max", "amount_usd": "100.00"})  # the price: as ever
    assert status == 201 and reply["plan"] == "max", reply
    status, reply = await record(stack, account_id, {"plan": "max", "amount_usd": "1", "override": "yes"})
    assert status == 400 and reply["error"]["field"] == "override", reply  # type: ignore[index]


async def test_a_payment_dated_before_the_account_applies_from_its_creation(stack: Stack) -> None:
    before = datetime.now(UTC)
    account = await stack.create_account()
    paid_at = datetime.now(UTC) - timedelta(hours=25)
    payment = await stack.pay(account["account_id"], "pro", "20.00", paid_at=paid_at.isoformat())
    assert abs(datetime.fromisoformat(payment["paid_at"]) - paid_at) < timedelta(seconds=1)
    effective_at = datetime.fromisoformat(payment["effective_at"])
    assert before - timedelta(seconds=1) <= effective_at <= datetime.now(UTC)  # the account's creation
    assert datetime.fromisoformat(payment["paid_until"]) > datetime.now(UTC) + timedelta(days=27)
    usage = await stack.usage(account["key"])
    assert usage["plan"] == "pro" and usage["window_5h"]["limit_flows"] == 50  # quota's view: Pro, not Free
    # the refund window counts from when it was paid: 25 hours ago
    status, preview = await stack.http("GET", "/v1/refunds/preview", token=account["key"])
    assert (status, preview["eligible"], preview["reason"]) == (200, False, "window_passed"), preview
