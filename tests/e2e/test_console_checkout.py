"""Paying through the payment provider (SPEC §2 payment provider, §4 payments; issue 12 item 4):
a checkout for a plan or a top-up on the local provider's page, "Pay" sending the signed webhook,
and the webhook recorded once, never when forged, signed with another secret, or stale."""

import asyncio
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from libs import paymentwebhooks
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected


async def checkout(stack: Stack, account: dict[str, Any], body: dict[str, Any]) -> tuple[int, Any]:
    return await stack.http("POST", "/v1/billing/checkout", token=account["management_key"], json=body)


async def pay(url: str) -> tuple[int, str]:
    """Open the provider's checkout page, then press "Pay"; (status, where it sends the buyer)."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as page:
            assert page.status == 200 and ">Pay<" in await page.text() and ">Cancel<" in await page.text()
        async with session.post(url + "/pay", allow_redirects=False) as response:
            return response.status, response.headers.get("Location", "")


async def payments(stack: Stack, account: dict[str, Any]) -> list[dict[str, Any]]:
    status, history = await stack.http("GET", "/v1/billing/history", token=account["key"])
    assert status == 200, history
    return [e for e in history["data"] if e["type"] in ("payment", "topup")]


def delivery(account_id: str, plan: str = "max", amount: str = "100.00") -> tuple[bytes, str]:
    payment_id = f"pi_{uuid.uuid4().hex[:16]}"
    event = {"id": f"evt_{payment_id}", "type": "checkout.completed",
             "data": {"account_id": account_id, "checkout_id": "cs_test", "payment_id": payment_id, "kind": "plan",
                      "plan": plan, "amount_usd": amount, "paid_at": datetime.now(UTC).isoformat()}}  # fmt: skip
    return json.dumps(event).encode(), payment_id


async def deliver(stack: Stack, body: bytes, signature: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.base + "/v1/webhooks/payments", data=body, headers={paymentwebhooks.HEADER: signature}
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_a_plan_checkout_is_paid_on_the_provider_page_and_recorded(stack: Stack) -> None:
    account = await stack.create_account("checkout")
    status, session = await checkout(stack, account, {"plan": "max"})
    assert status == 201, session
    assert session["amount_usd"] == "100.00" and session["checkout_url"].startswith(
        f"http://127.0.0.1:{stack.settings.simulator_port}/provider/checkout/"
    )
    status, back = await pay(session["checkout_url"])
    assert status == 303 and back.endswith("/subscription?checkout=paid")
    assert (await stack.usage(account["key"]))["plan"] == "max"
    [payment] = await eventually(lambda: payments(stack, account))  # billing's history lags by milliseconds
    assert payment["plan"] == "max" and payment["amount_usd"] == "100.00"
    # "Pay" pressed again (a double click, a retry): the same payment, recorded once.
    assert (await pay(session["checkout_url"]))[0] == 303
    assert len(await payments(stack, account)) == 1


async def test_a_top_up_checkout_credits_the_balance(stack: Stack) -> None:
    account = await stack.create_account("topup")
    status, session = await checkout(stack, account, {"topup_usd": "12.50"})
    assert status == 201 and session["amount_usd"] == "12.50"
    assert (await pay(session["checkout_url"]))[0] == 303
    assert (await stack.usage(account["key"]))["extra_usage"]["balance_usd"] == "12.500000"


async def test_checkout_input_is_checked_and_named(stack: Stack) -> None:
    account = await stack.create_account("bad-checkout")
    for body, field in [({"plan": "free"}, "plan"), ({"plan": "gold"}, "plan"), ({}, "plan"),
                        ({"plan": "pro", "topup_usd": "5"}, "plan"), ({"topup_usd": "0.50"}, "topup_usd"),
                        ({"topup_usd": "1.234"}, "topup_usd"), ({"topup_usd": "abc"}, "topup_usd"),
                        ({"plan": "pro", "extra": 1}, "extra")]:  # fmt: skip
        status, error = await checkout(stack, account, body)
        assert status == 400 and error["error"]["field"] == field, (body, error)
    status, error = await stack.http("POST", "/v1/billing/checkout", token=account["key"], json={"plan": "pro"})
    assert status == 403 and error["error"]["code"] == "insufficient_scope"


async def test_forged_stale_or_replayed_webhooks_record_nothing_more(stack: Stack) -> None:
    account = await stack.create_account("webhooks")
    secret = stack.settings.payment_webhook_secret
    body, _ = delivery(account["account_id"])
    now = int(time.time())
    refused = [
        paymentwebhooks.sign("not-the-secret", body, now),  # forged
        paymentwebhooks.sign(secret, body, now - 301),  # stale: a replay of an old delivery
        paymentwebhooks.sign(secret, body + b" ", now),  # the body changed after signing
        "t=abc,v1=00",
        "",
    ]
    for signature in refused:
        status, error = await deliver(stack, body, signature)
        assert status == 400 and error["error"]["code"] == "invalid_signature", (signature, error)
    assert await payments(stack, account) == []
    good = paymentwebhooks.sign(secret, body, now)
    status, reply = await deliver(stack, body, good)
    assert status == 200 and reply["duplicate"] is False, reply
    status, reply = await deliver(stack, body, good)  # the same delivery again
    assert status == 200 and reply["duplicate"] is True
    assert len(await eventually(lambda: payments(stack, account))) == 1
    assert (await stack.usage(account["key"]))["plan"] == "max"
    unknown, _ = delivery("acc_nobody")
    status, error = await deliver(stack, unknown, paymentwebhooks.sign(secret, unknown, now))
    assert status == 400 and error["error"]["field"] == "data.account_id"
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", good)


async def test_the_webhook_is_answered_2xx_only_once_billing_recorded_it(stack: Stack) -> None:
    """With billing away, a good delivery gets a 5xx (the provider retries it) and nothing is
    recorded; once billing is back the same delivery is recorded, once."""
    account = await stack.create_account("webhook-retry")
    body, payment_id = delivery(account["account_id"])
    signature = paymentwebhooks.sign(stack.settings.payment_webhook_secret, body, int(time.time()))
    await asyncio.to_thread(stack.billing.stop)
    try:
        status, error = await deliver(stack, body, signature)
        assert status == 503, error
    finally:
        await asyncio.to_thread(stack.billing.start)
    assert await payments(stack, account) == [] and (await stack.usage(account["key"]))["plan"] == "free"
    status, reply = await deliver(stack, body, signature)  # the provider's retry
    assert status == 200 and reply["duplicate"] is False, reply
    [payment] = await eventually(lambda: payments(stack, account))
    assert payment["reference"] == payment_id and (await stack.usage(account["key"]))["plan"] == "max"
