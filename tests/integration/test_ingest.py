"""Usage in through ingress -> JetStream -> quota projection -> quota.status, over real servers."""

import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import pytest

from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from libs.pricing.money import MICRO
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected
CATALOG = load_catalog()


def expected_flows(
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached: int = 0,
    rate: Fraction | None = None,
    multiplier: Fraction = Fraction(1),
) -> int:
    return price_call(
        CATALOG.models[model],
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached,
        usd_per_flow=rate or CATALOG.default_usd_per_flow,
        multiplier=multiplier,
    ).flows_micros


async def test_usage_reaches_the_quota_windows(stack: Stack) -> None:
    account = await stack.create_account()
    events = [
        usage_event(account["account_id"], model="deepseek/deepseek-chat", input_tokens=1000, output_tokens=500),
        usage_event(
            account["account_id"],
            model="z-ai/glm-4.7",
            input_tokens=20_000,
            output_tokens=3_000,
            cached_tokens=5_000,
        ),
    ]
    status, body = await stack.post_usage(events)
    assert (status, body) == (202, {"accepted": 2, "duplicates": 0})
    want = expected_flows("deepseek/deepseek-chat", 1000, 500) + expected_flows("z-ai/glm-4.7", 20_000, 3_000, 5_000)

    async def counted() -> bool:
        usage = await stack.usage(account["key"])
        return usage["window_5h"]["used_flows"] == want / MICRO

    await eventually(counted)
    usage = await stack.usage(account["key"])
    assert usage["plan"] == "free"
    for window in ("window_5h", "weekly", "monthly"):
        assert usage[window]["used_flows"] == pytest.approx(want / MICRO, abs=1e-9)
    assert usage["window_5h"]["limit_flows"] == 5
    assert usage["weekly"]["limit_flows"] == 50.4
    assert usage["monthly"]["limit_flows"] == 216
    opened = datetime.fromisoformat(usage["window_5h"]["started_at"])
    assert datetime.fromisoformat(usage["window_5h"]["resets_at"]) - opened == timedelta(hours=5)
    assert datetime.fromisoformat(usage["weekly"]["resets_at"]) - opened == timedelta(days=7)

    status, listing = await stack.http("GET", "/v1/account/usage/events?limit=10", token=account["key"])
    assert status == 200
    assert {e["event_id"] for e in listing["data"]} == {e["event_id"] for e in events}
    assert all(e["billing_mode"] == "subscription" for e in listing["data"])


async def test_duplicates_count_once_even_after_the_broker_window(stack: Stack) -> None:
    account = await stack.create_account()
    event = usage_event(account["account_id"])
    assert await stack.post_usage([event]) == (202, {"accepted": 1, "duplicates": 0})
    assert await stack.post_usage([event]) == (202, {"accepted": 0, "duplicates": 1})
    other = usage_event(account["account_id"])
    assert await stack.post_usage([event, other]) == (202, {"accepted": 1, "duplicates": 1})
    one = expected_flows("deepseek/deepseek-chat", 1000, 500)

    async def counted() -> bool:
        return (await stack.usage(account["key"]))["window_5h"]["used_flows"] == 2 * one / MICRO

    await eventually(counted)


async def test_payment_raises_the_caps_at_once(stack: Stack) -> None:
    account = await stack.create_account()
    await stack.pay(account["account_id"], "pro", "20.00")
    usage = await stack.usage(account["key"])  # at once: the payment answers once quota applied it
    assert usage["window_5h"]["limit_flows"] == 50
    assert usage["monthly"]["limit_flows"] == 2160


async def test_multiplier_and_flow_rate_price_usage_by_event_time(stack: Stack) -> None:
    account = await stack.create_account(multiplier="1.25")
    now = datetime.now(UTC)
    status, _ = await stack.http(
        "POST",
        "/admin/v1/flow-rate",
        token=stack.settings.admin_token,
        json={"usd_per_flow": "0.03", "effective_at": (now - timedelta(hours=1)).isoformat()},
    )
    assert status == 200
    before = usage_event(account["account_id"], occurred_at=(now - timedelta(hours=2)).isoformat())
    after = usage_event(account["account_id"], occurred_at=now.isoformat())
    assert (await stack.post_usage([before, after]))[0] == 202
    want = {
        before["event_id"]: expected_flows("deepseek/deepseek-chat", 1000, 500, multiplier=Fraction(5, 4)),
        after["event_id"]: expected_flows(
            "deepseek/deepseek-chat", 1000, 500, rate=Fraction(3, 100), multiplier=Fraction(5, 4)
        ),
    }
    assert want[before["event_id"]] != want[after["event_id"]]

    async def listed() -> dict[str, float]:
        _, body = await stack.http("GET", "/v1/account/usage/events", token=account["key"])
        return {e["event_id"]: e["flows"] for e in body["data"]} if len(body["data"]) == 2 else {}

    flows = await eventually(listed)
    assert flows == {k: v / MICRO for k, v in want.items()}
    # Back to the default rate, so the other tests in this module price as they expect.
    status, _ = await stack.http(
        "POST",
        "/admin/v1/flow-rate",
        token=stack.settings.admin_token,
        json={"usd_per_flow": "10/396", "effective_at": datetime.now(UTC).isoformat()},
    )
    assert status == 200


async def test_plans_and_models_are_public(stack: Stack) -> None:
    status, models = await stack.http("GET", "/v1/models")
    assert status == 200 and models["object"] == "list"
    assert len(models["data"]) == len(CATALOG.models)
    free = [m["id"] for m in models["data"] if "free" in m["plans"]]
    assert len(free) == 12
    pro_only = next(m for m in models["data"] if m["id"] == "openai/gpt-5-pro")
    assert pro_only["plans"] == ["max", "ultra"]
    assert set(pro_only["pricing"]) == {"prompt", "completion", "input_cache_read", "image", "request_flows"}
    status, plans = await stack.http("GET", "/v1/plans")
    assert status == 200
    by_id = {p["id"]: p for p in plans["plans"]}
    assert [by_id[p]["equivalent_usd"] for p in ("pro", "max", "ultra")] == ["54.55", "327.27", "872.73"]
    assert [by_id[p]["leverage"] for p in ("pro", "max", "ultra")] == [2.73, 3.27, 4.36]


NOW = datetime.now(UTC)
GOOD = {
    "event_id": "x",
    "account_id": "acc_x",
    "model": "deepseek/deepseek-chat",
    "input_tokens": 1,
    "output_tokens": 1,
    "billing_mode": "subscription",
    "occurred_at": NOW.isoformat(),
}
BAD_RECORDS = [
    ({"event_id": ""}, "events[1].event_id"),
    ({"event_id": "has space"}, "events[1].event_id"),
    ({"event_id": 7}, "events[1].event_id"),
    ({"account_id": "acc.with.dots"}, "events[1].account_id"),
    ({"account_id": "acc_does_not_exist"}, "events[1].account_id"),
    ({"model": "no/such-model"}, "events[1].model"),
    ({"model": ""}, "events[1].model"),
    ({"input_tokens": -1}, "events[1].input_tokens"),
    ({"input_tokens": "12"}, "events[1].input_tokens"),
    ({"input_tokens": 1.5}, "events[1].input_tokens"),
    ({"output_tokens": -5}, "events[1].output_tokens"),
    ({"output_tokens": None}, "events[1].output_tokens"),
    ({"cached_tokens": -1}, "events[1].cached_tokens"),
    ({"images": -1}, "events[1].images"),
    ({"images": 2}, "events[1].images"),
    ({"billing_mode": "free"}, "events[1].billing_mode"),
    ({"occurred_at": "yesterday"}, "events[1].occurred_at"),
    ({"occurred_at": "2026-01-01T00:00:00"}, "events[1].occurred_at"),
    # Offsets from the time the test runs (a slow suite may reach it minutes after collection).
    ({"occurred_at": -timedelta(days=9)}, "events[1].occurred_at"),
    ({"occurred_at": timedelta(minutes=10)}, "events[1].occurred_at"),
    ({"key_id": ""}, "events[1].key_id"),
    ({"surprise": 1}, "events[1].surprise"),
]


@pytest.mark.parametrize(("change", "field"), BAD_RECORDS, ids=[f for _, f in BAD_RECORDS])
async def test_a_bad_record_refuses_the_whole_batch_and_names_it(stack: Stack, change: dict, field: str) -> None:
    account = await stack.create_account()
    good = usage_event(account["account_id"])
    change = {k: (datetime.now(UTC) + v).isoformat() if isinstance(v, timedelta) else v for k, v in change.items()}
    bad = {**GOOD, "account_id": account["account_id"], "event_id": uuid.uuid4().hex, **change}
    for key in [k for k, v in change.items() if v is ...]:
        bad.pop(key)
    before = await stack.stream_messages()
    status, body = await stack.post_usage([good, bad])
    assert status == 400, body
    assert body["error"]["field"] == field
    assert "record 1" in body["error"]["message"]
    assert await stack.stream_messages() == before
    # Nothing of the batch was claimed either: the good record goes through afterwards.
    assert await stack.post_usage([good]) == (202, {"accepted": 1, "duplicates": 0})


@pytest.mark.parametrize(
    "missing",
    ["event_id", "account_id", "model", "input_tokens", "output_tokens", "billing_mode", "occurred_at"],
)
async def test_a_missing_field_is_named(stack: Stack, missing: str) -> None:
    record = {k: v for k, v in GOOD.items() if k != missing}
    status, body = await stack.post_usage([record])
    assert status == 400
    assert body["error"]["field"] == f"events[0].{missing}"


async def test_malformed_json_wrong_token_and_oversized_batches(stack: Stack) -> None:
    before = await stack.stream_messages()
    status, body = await stack.http("POST", "/v1/usage", token=stack.settings.ingest_token, data=b'{"events": [')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = await stack.http("POST", "/v1/usage", token="wrong", json={"events": [GOOD]})
    assert status == 401 and body["error"]["field"] == "Authorization"
    status, body = await stack.http("POST", "/v1/usage", json={"events": [GOOD]})
    assert status == 401
    too_many = [{**GOOD, "event_id": str(i)} for i in range(stack.settings.max_usage_batch + 1)]
    status, body = await stack.post_usage(too_many)
    assert status == 413 and body["error"]["field"] == "events"
    status, body = await stack.http(
        "POST",
        "/v1/usage",
        token=stack.settings.ingest_token,
        data=b" " * (stack.settings.max_body_bytes + 1),
    )
    assert status == 413
    status, body = await stack.post_usage([])
    assert status == 400 and body["error"]["field"] == "events"
    assert await stack.stream_messages() == before


async def test_account_api_refuses_bad_keys(stack: Stack) -> None:
    account = await stack.create_account()
    key = account["key"]
    for bad in ["", "sk-ss-v1-short", key[:-1] + ("A" if key[-1] != "A" else "B"), "dev-admin-token"]:
        status, _ = await stack.http("GET", "/v1/account/usage", token=bad or None)
        assert status == 401, bad


async def test_admin_api_validates(stack: Stack) -> None:
    admin = stack.settings.admin_token
    account = await stack.create_account()
    path = f"/admin/v1/accounts/{account['account_id']}"
    cases = [
        ("POST", "/admin/v1/accounts", {"name": ""}, 400, "name"),
        ("POST", "/admin/v1/accounts", {"name": "x", "multiplier": "-1"}, 400, "multiplier"),
        ("POST", f"{path}/payments", {"plan": "gold", "amount_usd": "20", "payment_ref": "r"}, 400, "plan"),
        (
            "POST",
            f"{path}/payments",
            {"plan": "pro", "amount_usd": "abc", "payment_ref": "r"},
            400,
            "amount_usd",
        ),
        ("POST", f"{path}/payments", {"plan": "pro", "amount_usd": "20"}, 400, "payment_ref"),
        (
            "POST",
            "/admin/v1/accounts/acc_nobody/payments",
            {"plan": "pro", "amount_usd": "20", "payment_ref": "r"},
            404,
            "account_id",
        ),
        ("PUT", f"{path}/multiplier", {"multiplier": 0}, 400, "multiplier"),
        ("POST", "/admin/v1/flow-rate", {"usd_per_flow": "zero"}, 400, "usd_per_flow"),
    ]
    for method, url, body, want_status, field in cases:
        status, reply = await stack.http(method, url, token=admin, json=body)
        assert (status, reply["error"]["field"]) == (want_status, field), (url, body, reply)
    status, _ = await stack.http("POST", "/admin/v1/accounts", token="nope", json={"name": "x"})
    assert status == 401
