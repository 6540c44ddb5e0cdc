"""Bad input is a 4xx naming the field and poisons nothing (issue 10, item 8): values that pass the
types but fail Postgres (NUL and other control characters), overflow a bigint, or overflow date
arithmetic are refused at the edge; a responder answers a request it cannot serve, never times out.

The property test that throws generated input at every route is in test_hostile_input_property.py.
"""

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from proto.v1 import (
    BillingCommandFailed,
    BillingHistoryRequest,
    GetRefund,
    RecordPayment,
    RefundRefused,
    encode,
    subjects,
)
from tests.integration.conftest import dead_letters, settled
from tests.stack import Stack, usage_event

pytestmark = pytest.mark.connected


async def refused(stack: Stack, method: str, path: str, token: str | None, body: Any, field: str) -> None:
    """The request is a 400 naming `field`, and the log holds nothing more."""
    before = await stack.stream_messages()
    status, reply = await stack.http(method, path, token=token, json=body)
    assert (status, reply["error"].get("field")) == (400, field), (path, body, reply)
    assert await stack.stream_messages() == before


async def test_control_characters_in_bodies_are_refused_naming_the_field(stack: Stack) -> None:
    admin, ingest = stack.settings.admin_token, stack.settings.ingest_token
    account = await stack.create_account()
    account_id, key = account["account_id"], account.get("management_key", account["key"])
    base = f"/admin/v1/accounts/{account_id}"
    dlq_before = await dead_letters(stack)
    for text in ["a\x00b", "\x01", "tab\there", "new\nline", "c1\x85", "\x7f"]:
        usage = usage_event(account_id, key_id=text)
        await refused(stack, "POST", "/v1/usage", ingest, {"events": [usage]}, "events[0].key_id")
        await refused(stack, "POST", "/admin/v1/accounts", admin, {"name": text}, "name")
        payment = {"plan": "pro", "amount_usd": "20.00", "payment_ref": text}
        await refused(stack, "POST", f"{base}/payments", admin, payment, "payment_ref")
        await refused(stack, "POST", f"{base}/balance", admin, {"amount_usd": "5", "topup_ref": text}, "topup_ref")
        await refused(stack, "POST", "/v1/keys", key, {"name": text}, "name")
        await refused(
            stack, "PUT", "/v1/account/extra-usage", key, {"enabled": True, "payg_key_id": text}, "payg_key_id"
        )
    await settled(stack)
    assert await dead_letters(stack) == dlq_before


async def test_control_characters_in_path_and_query_are_refused_at_once(stack: Stack) -> None:
    """`GET /v1/refunds/%00` hung 7 s (the refund service never answered) and then said 503 "retry"."""
    account = await stack.create_account()
    key = account.get("management_key", account["key"])
    admin = stack.settings.admin_token
    cases = [
        ("GET", "/v1/refunds/%00", key, "refund_id"),
        ("POST", "/v1/refunds/ref%00x/cancel", key, "refund_id"),
        ("POST", "/v1/keys/%00/rotate", key, "key_id"),
        ("DELETE", "/v1/keys/key%01", key, "key_id"),
        ("GET", "/v1/account/costs?group_by=%00", key, "group_by"),
        ("POST", "/admin/v1/accounts/acc%00/payments", admin, "account_id"),
    ]
    for method, path, token, field in cases:
        started = asyncio.get_running_loop().time()
        status, reply = await stack.http(method, path, token=token, json={})
        assert (status, reply["error"]["field"]) == (400, field), (path, reply)
        assert asyncio.get_running_loop().time() - started < stack.settings.request_timeout_s, path


async def test_dates_out_of_range_are_refused(stack: Stack) -> None:
    """`GET /v1/account/costs?to=0001-01-01` was a 500 (the default `from` is 30 days before it)."""
    account = await stack.create_account()
    key = account.get("management_key", account["key"])
    admin = stack.settings.admin_token
    for query, field in [("to=0001-01-01", "to"), ("from=0001-01-01", "from"), ("to=9999-12-31", "to")]:
        status, reply = await stack.http("GET", f"/v1/account/costs?{query}", token=key)
        assert (status, reply["error"]["field"]) == (400, field), (query, reply)
    base = f"/admin/v1/accounts/{account['account_id']}"
    for when in ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"]:
        payment = {"plan": "pro", "amount_usd": "20.00", "payment_ref": uuid.uuid4().hex, "paid_at": when}
        await refused(stack, "POST", f"{base}/payments", admin, payment, "paid_at")
        await refused(
            stack, "PUT", f"{base}/multiplier", admin, {"multiplier": "1", "effective_at": when}, "effective_at"
        )
        await refused(
            stack, "POST", "/admin/v1/flow-rate", admin, {"usd_per_flow": "0.03", "effective_at": when}, "effective_at"
        )


async def test_numbers_whose_products_overflow_a_bigint_are_refused(stack: Stack) -> None:
    admin = stack.settings.admin_token
    account = await stack.create_account()
    base = f"/admin/v1/accounts/{account['account_id']}"
    dlq_before = await dead_letters(stack)
    tiny, huge = "0.000000000000000000000001", "1" + "0" * 20
    await refused(stack, "POST", "/admin/v1/accounts", admin, {"name": "x", "multiplier": tiny}, "multiplier")
    await refused(stack, "PUT", f"{base}/multiplier", admin, {"multiplier": tiny}, "multiplier")
    await refused(stack, "PUT", f"{base}/multiplier", admin, {"multiplier": huge}, "multiplier")
    await refused(stack, "POST", "/admin/v1/flow-rate", admin, {"usd_per_flow": tiny}, "usd_per_flow")
    await refused(stack, "POST", f"{base}/balance", admin, {"amount_usd": huge}, "amount_usd")
    await refused(stack, "POST", f"{base}/balance", admin, {"amount_usd": int(huge)}, "amount_usd")
    payment = {"plan": "pro", "amount_usd": huge, "payment_ref": uuid.uuid4().hex}
    await refused(stack, "POST", f"{base}/payments", admin, payment, "amount_usd")
    await settled(stack)
    assert await dead_letters(stack) == dlq_before


async def test_responders_answer_a_request_they_cannot_serve(stack: Stack) -> None:
    """Straight to the services, past ingress's checks: a value Postgres refuses gets an answer
    (a typed refusal), not silence that the caller only learns of by its timeout."""
    nc = await stack.nats()
    try:
        account_id = (await stack.create_account())["account_id"]
        reply = await nc.request(subjects.REFUND_GET, encode(GetRefund(account_id=account_id, refund_id="\x00")), 3)
        refusal = msgspec.json.decode(reply.data, type=RefundRefused)
        assert refusal.code == "invalid_request"
        history = BillingHistoryRequest(account_id="acc_\x00", limit=10)
        reply = await nc.request(subjects.BILLING_HISTORY, encode(history), 3)
        assert msgspec.json.decode(reply.data, type=BillingCommandFailed).code == "invalid_request"
        payment = RecordPayment(
            account_id=account_id, plan="pro", amount_micros=20_000_000, payment_ref="\x00", paid_at=datetime.now(UTC)
        )
        timeout = stack.settings.request_timeout_s + stack.settings.billing_barrier_wait_s
        reply = await nc.request(subjects.BILLING_RECORD_PAYMENT, encode(payment), timeout)
        assert msgspec.json.decode(reply.data, type=BillingCommandFailed).code == "invalid_request"
    finally:
        await nc.close()
