"""Pay-as-you-go through the gateway: PAYG keys, Extra Usage overflow and its return, 402s."""

import asyncio
from datetime import UTC, datetime, timedelta

import openai
import pytest

from tests.e2e.conftest import FREE_MODEL, HI, balance, metered, oai, payg_key, top_up
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected


async def test_a_payg_key_bills_the_balance_exactly_and_not_the_windows(stack: Stack) -> None:
    account = await stack.create_account()
    key = await payg_key(stack, account)
    with pytest.raises(openai.APIStatusError) as empty:
        await oai(stack, key["key"]).chat.completions.create(**HI)
    assert empty.value.status_code == 402
    await top_up(stack, account["account_id"], "1.00")
    assert await balance(stack, account["key"]) == "1.000000"
    raw = await oai(stack, key["key"]).chat.completions.with_raw_response.create(**HI)
    assert raw.headers["x-flowplan-billing-mode"] == "payg"
    [event] = await metered(stack, account["key"], 1)
    assert event["billing_mode"] == "payg" and event["key_id"] == key["id"]

    async def debited() -> bool:
        return await balance(stack, account["key"]) != "1.000000"

    await eventually(debited)
    cost = int(event["usd_cost"].replace(".", ""))
    assert await balance(stack, account["key"]) == f"{(1_000_000 - cost) / 1_000_000:.6f}"
    assert (await stack.usage(account["key"]))["window_5h"]["used_flows"] == 0

    # billing's history reports the one balance (quota's, asked at once: no second ledger to catch up)
    _, history = await stack.http("GET", "/v1/billing/history", token=account["key"])
    assert history["balance_usd"] == f"{(1_000_000 - cost) / 1_000_000:.6f}"
    assert [e["type"] for e in history["data"]].count("top_up") == 1


async def test_overflow_to_payg_past_the_cap_and_back_when_the_window_resets(stack: Stack) -> None:
    account = await stack.create_account()
    key = await payg_key(stack, account)
    await top_up(stack, account["account_id"], "2.00")
    # A window opened almost 5 hours ago and already over its 5 Flows: it resets in seconds.
    resets_at = datetime.now(UTC) + timedelta(seconds=6)
    opened = resets_at - timedelta(hours=5)
    heavy = usage_event(account["account_id"], model="z-ai/glm-4.7", input_tokens=200_000, output_tokens=20_000,
                        occurred_at=opened.isoformat())  # fmt: skip
    assert (await stack.post_usage([heavy]))[0] == 202

    async def exhausted() -> bool:
        return (await stack.usage(account["key"]))["window_5h"]["remaining_flows"] == 0

    await eventually(exhausted)
    client = oai(stack, account["key"])
    with pytest.raises(openai.RateLimitError) as waiting:  # no Extra Usage: wait, never PAYG
        await client.chat.completions.create(**HI)
    assert waiting.value.code == "quota_exhausted"

    status, body = await stack.http("PUT", "/v1/account/extra-usage", token=account["management_key"],
                                    json={"enabled": True, "payg_key_id": key["id"]})  # fmt: skip
    assert status == 200 and body["enabled"] is True and body["payg_key_id"] == key["id"]
    raw = await client.chat.completions.with_raw_response.create(**HI)
    assert raw.headers["x-flowplan-billing-mode"] == "payg"

    await asyncio.sleep(max(0.0, (resets_at - datetime.now(UTC)).total_seconds()) + 0.2)
    raw = await client.chat.completions.with_raw_response.create(**HI)
    assert raw.headers["x-flowplan-billing-mode"] == "subscription"  # back by itself
    events = await metered(stack, account["key"], 3)
    assert [e["billing_mode"] for e in events[:2]] == ["subscription", "payg"]


async def test_extra_usage_with_an_empty_balance_refuses_with_402(stack: Stack) -> None:
    account = await stack.create_account()
    key = await payg_key(stack, account)
    status, _ = await stack.http("PUT", "/v1/account/extra-usage", token=account["management_key"],
                                 json={"enabled": True, "payg_key_id": key["id"]})  # fmt: skip
    assert status == 200
    heavy = usage_event(account["account_id"], model="z-ai/glm-4.7", input_tokens=200_000, output_tokens=20_000)
    assert (await stack.post_usage([heavy]))[0] == 202

    async def exhausted() -> bool:
        return (await stack.usage(account["key"]))["window_5h"]["remaining_flows"] == 0

    await eventually(exhausted)
    with pytest.raises(openai.APIStatusError) as broke:
        await oai(stack, account["key"]).chat.completions.create(**HI)
    assert broke.value.status_code == 402 and broke.value.code == "insufficient_balance"


async def test_extra_usage_needs_one_of_the_accounts_own_payg_keys(stack: Stack) -> None:
    account = await stack.create_account()
    other = await stack.create_account()
    foreign = await payg_key(stack, other)
    for body, field in (
        ({"enabled": True}, "payg_key_id"),
        ({"enabled": True, "payg_key_id": account["key_id"]}, "payg_key_id"),  # a subscription key
        ({"enabled": True, "payg_key_id": foreign["id"]}, "payg_key_id"),
        ({"enabled": "yes"}, "enabled"),
    ):
        status, reply = await stack.http("PUT", "/v1/account/extra-usage", token=account["management_key"], json=body)
        assert (status, reply["error"]["field"]) == (400, field), body


async def test_concurrent_payg_calls_cannot_overdraw_a_small_balance(stack: Stack) -> None:
    account = await stack.create_account()
    key = await payg_key(stack, account)
    await top_up(stack, account["account_id"], "0.001")
    client = oai(stack, key["key"])
    long = [{"role": "user", "content": "hi [[tokens:1000]]"}]
    long_call = {**HI, "max_tokens": 1000, "messages": long}  # each reserves 0.000427 USD, costs about 0.000421

    async def call() -> bool:
        try:
            await client.chat.completions.create(**long_call)
            return True
        except openai.APIStatusError as exc:
            assert exc.status_code == 402
            return False

    admitted = sum(await asyncio.gather(*(call() for _ in range(8))))
    assert admitted == 2  # 1000 - 427 covers a second estimate, 146 no third
    events = await metered(stack, account["key"], admitted)
    spent = sum(int(e["usd_cost"].replace(".", "")) for e in events)

    async def settled() -> str:
        left = await balance(stack, account["key"])
        return left if left == f"{(1_000 - spent) / 1_000_000:.6f}" else ""

    left = await eventually(settled)
    assert float(left) >= 0  # admitted calls were covered by their estimates


async def test_billing_history_and_cost_analysis(stack: Stack) -> None:
    account = await stack.create_account()
    await stack.pay(account["account_id"], "pro", "20.00", ref="pay-1")
    await top_up(stack, account["account_id"], "5.00")
    client = oai(stack, account["key"])
    for model in (FREE_MODEL, FREE_MODEL, "anthropic/claude-haiku-4.5"):
        await client.chat.completions.create(**{**HI, "model": model})
    yesterday = usage_event(account["account_id"], occurred_at=(datetime.now(UTC) - timedelta(days=1)).isoformat())
    for _ in range(2):  # a duplicate counts once
        assert (await stack.post_usage([yesterday]))[0] == 202
    events = await metered(stack, account["key"], 4)

    async def history() -> list[dict]:
        _, body = await stack.http("GET", "/v1/billing/history", token=account["key"])
        return body["data"] if len(body["data"]) >= 3 else []

    entries = await eventually(history)
    kinds = {e["type"]: e for e in entries}
    assert kinds["payment"]["amount_usd"] == "20.00" and kinds["payment"]["reference"] == "pay-1"
    assert kinds["plan_change"]["plan"] == "pro" and kinds["plan_change"]["previous_plan"] == "free"
    assert kinds["top_up"]["amount_usd"] == "5.00"

    async def costs(group_by: str) -> dict:
        _, body = await stack.http("GET", f"/v1/account/costs?group_by={group_by}", token=account["key"])
        return body if body["total"]["calls"] == 4 else {}

    by_model = await eventually(lambda: costs("model"))
    lines = {line["model"]: line for line in by_model["data"]}
    assert lines[FREE_MODEL]["calls"] == 3 and lines["anthropic/claude-haiku-4.5"]["calls"] == 1
    assert by_model["total"]["usd"] == f"{sum(int(e['usd_cost'].replace('.', '')) for e in events) / 1e6:.6f}"
    by_day = await costs("day")
    assert [line["calls"] for line in by_day["data"]] == [1, 3]  # yesterday, today
    status, body = await stack.http("GET", "/v1/account/costs?group_by=week", token=account["key"])
    assert status == 400 and body["error"]["field"] == "group_by"
    status, body = await stack.http("GET", "/v1/account/costs?from=yesterday", token=account["key"])
    assert status == 400 and body["error"]["field"] == "from"


async def test_gateway_calls_are_priced_at_the_accounts_multiplier_and_the_rate_in_force(stack: Stack) -> None:
    insider = await stack.create_account("insider", multiplier="2")
    standard = await stack.create_account("standard")
    for account in (insider, standard):
        await oai(stack, account["key"]).chat.completions.create(**{**HI, "max_tokens": 500})
    [cheap] = await metered(stack, insider["key"], 1)
    [full] = await metered(stack, standard["key"], 1)
    assert cheap["usd_cost"] == full["usd_cost"]  # the same call, the same list price
    overhead = 0.01  # deepseek-chat's per-call Flows, not divided by the multiplier
    assert cheap["flows"] == pytest.approx((full["flows"] - overhead) / 2 + overhead, abs=1e-6)
