"""Insider members (SPEC §1 "Insiders and abuse"): the operator marks an account; while its paid
subscription is unbroken its calls are priced with the plans file's insider multiplier, by quota
for the gateway and by ingress for metered usage alike; the first lapse to Free ends it for good
(InsiderStatusEnded, once), a later payment does not bring it back; an explicit multiplier wins;
a replay of the log gives the same tables."""

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import aiohttp
import pytest

from libs.months import add_months
from libs.pricing.flows import price_call
from libs.pricing.money import parse_fraction
from proto.v1 import InsiderStatusEnded, decode_event
from tests.e2e.conftest import CATALOG, HI, metered, new_owner, oai
from tests.stack import Stack, eventually, flowplan_replay, usage_event

pytestmark = pytest.mark.connected
INSIDER = Fraction(5, 4)


async def set_insider(stack: Stack, account_id: str, body: Any) -> tuple[int, Any]:
    return await stack.http(
        "PUT", f"/admin/v1/accounts/{account_id}/insider", token=stack.settings.admin_token, json=body
    )


async def paid_account(stack: Stack, name: str, plan: str = "pro", **payment: Any) -> dict[str, str]:
    account = await stack.create_account(name)
    await stack.pay(account["account_id"], plan, "20.00", **payment)
    return account


async def priced_with(stack: Stack, key: str, multiplier: str) -> None:
    """quota's view of the account (what the gateway prices with) reaches the multiplier."""

    async def reached() -> bool:
        return (await stack.usage(key))["multiplier"] == multiplier

    await eventually(reached)


def assert_priced(event: dict[str, Any], multiplier: Fraction) -> None:
    """The call's Flows are its USD cost / (USD per Flow x multiplier) + the per-call overhead, exactly."""
    assert parse_fraction(event["multiplier"]) == multiplier
    price = price_call(
        CATALOG.models[event["model"]], input_tokens=event["input_tokens"], output_tokens=event["output_tokens"],
        cached_tokens=event["cached_tokens"], images=event["images"], usd_per_flow=CATALOG.default_usd_per_flow,
        multiplier=multiplier,
    )  # fmt: skip
    assert Decimal(str(event["flows"])) * 10**6 == price.flows_micros
    assert Decimal(event["usd_cost"]) * 10**6 == price.usd_cost_micros


async def call(stack: Stack, key: str, count: int) -> dict[str, Any]:
    """One call through the gateway; its usage event once it is counted (newest first)."""
    await oai(stack, key).chat.completions.create(**HI)
    return (await metered(stack, key, count))[0]


async def ended_events(stack: Stack, account_id: str) -> list[InsiderStatusEnded]:
    nc = await stack.nats()
    try:
        js = nc.jetstream()
        subject = f"flowplan.p.*.account.{account_id}.InsiderStatusEnded"
        info = await js.stream_info(stack.settings.stream, subjects_filter=subject)
        if not info.state.subjects:
            return []
        count = sum(info.state.subjects.values())
        last = await js.get_last_msg(stack.settings.stream, subject)
        event = decode_event(last.data or b"")
        assert isinstance(event, InsiderStatusEnded)
        return [event] * count
    finally:
        await nc.close()


async def test_an_insider_on_pro_is_priced_at_the_insider_multiplier_by_the_gateway_and_ingress(stack: Stack) -> None:
    standard, insider = await paid_account(stack, "standard"), await paid_account(stack, "insider")
    status, body = await set_insider(stack, insider["account_id"], {"insider": True})
    assert status == 200, body
    assert body["account_id"] == insider["account_id"] and body["insider"] is True
    await priced_with(stack, insider["key"], "5/4")
    assert (await stack.usage(insider["key"]))["insider"] is True
    assert (await stack.usage(standard["key"]))["insider"] is False

    standard_call, insider_call = await call(stack, standard["key"], 1), await call(stack, insider["key"], 1)
    assert_priced(standard_call, Fraction(1))
    assert_priced(insider_call, INSIDER)
    assert insider_call["usd_cost"] == standard_call["usd_cost"]  # the same call: more value per Flow
    assert insider_call["flows"] < standard_call["flows"]

    # Metered usage posted to ingress is priced by the same rule.
    assert (await stack.post_usage([usage_event(insider["account_id"])]))[0] == 202
    metered_event = (await metered(stack, insider["key"], 2))[0]
    assert_priced(metered_event, INSIDER)

    # The operator's explicit multiplier wins over the insider one, and taking the mark off ends it.
    status, _ = await stack.http(
        "PUT", f"/admin/v1/accounts/{insider['account_id']}/multiplier", token=stack.settings.admin_token,
        json={"multiplier": "0.8"},
    )  # fmt: skip
    assert status == 200
    await priced_with(stack, insider["key"], "4/5")
    assert_priced(await call(stack, insider["key"], 3), Fraction(4, 5))
    status, _ = await stack.http(
        "PUT", f"/admin/v1/accounts/{insider['account_id']}/multiplier", token=stack.settings.admin_token,
        json={"multiplier": "1"},
    )  # fmt: skip
    assert status == 200
    await priced_with(stack, insider["key"], "5/4")
    assert (await set_insider(stack, insider["account_id"], {"insider": False}))[0] == 200
    await priced_with(stack, insider["key"], "1")
    assert_priced(await call(stack, insider["key"], 4), Fraction(1))


async def test_bad_insider_requests_are_4xx_naming_the_field(stack: Stack) -> None:
    account = await stack.create_account("bad-insider")
    status, body = await set_insider(stack, account["account_id"], {"insider": "yes"})
    assert status == 400 and "insider" in str(body), body
    status, body = await set_insider(stack, account["account_id"], {})
    assert status == 400 and "insider" in str(body), body
    status, body = await set_insider(stack, account["account_id"], {"insider": True, "effective_at": "soon"})
    assert status == 400 and "effective_at" in str(body), body
    status, body = await set_insider(stack, "acc_nobody", {"insider": True})
    assert status == 404, body
    status, body = await stack.http("PUT", f"/admin/v1/accounts/{account['account_id']}/insider", json={})
    assert status == 401, body


async def test_the_first_lapse_to_free_ends_insider_status_for_good(stack: Stack) -> None:
    now = datetime.now(UTC)
    paid_at = now - timedelta(days=40)  # a month of Pro that ended about ten days ago, unrenewed
    account = await paid_account(stack, "lapsed", paid_at=paid_at.isoformat())
    marked_at = now - timedelta(days=45)
    status, _ = await set_insider(
        stack, account["account_id"], {"insider": True, "effective_at": marked_at.isoformat()}
    )
    assert status == 200

    # Paying again after the lapse: the lapse is recorded (by the payment, or by billing's sweep
    # before it), dated when the month ended, once; the new month is priced at 1.
    await stack.pay(account["account_id"], "pro", "20.00")

    async def ended() -> list[InsiderStatusEnded]:
        return await ended_events(stack, account["account_id"])

    [event] = await eventually(ended)
    assert event.reason == "lapsed_to_free"
    assert event.occurred_at == add_months(paid_at, 1)
    await priced_with(stack, account["key"], "1")
    usage = await stack.usage(account["key"])
    assert usage["plan"] == "pro" and usage["insider"] is False
    assert_priced(await call(stack, account["key"], 1), Fraction(1))
    # ingress prices a call made after the lapse at 1 as well (before the mark it would be 5/4).
    yesterday = (now - timedelta(days=1)).isoformat()
    assert (await stack.post_usage([usage_event(account["account_id"], occurred_at=yesterday)]))[0] == 202
    events = await metered(stack, account["key"], 2)
    assert [e["multiplier"] for e in events] == ["1", "1"]

    # A payment later still does not bring it back, and the end is not recorded twice.
    await stack.pay(account["account_id"], "max", "100.00")
    assert len(await ended_events(stack, account["account_id"])) == 1
    assert (await stack.usage(account["key"]))["multiplier"] == "1"

    # A rebuild of every projection from the log gives the same tables.
    code, out = await flowplan_replay(stack, "--projection", "all", "--verify")
    assert code == 0, out
    assert (await stack.usage(account["key"]))["insider"] is False


async def test_the_console_shows_insider_on_the_plan_and_the_multiplier_of_each_call(stack: Stack) -> None:
    account, browser = await new_owner(stack)
    try:
        await stack.pay(account["account_id"], "pro", "20.00")
        _, page = await browser.get("/subscription")
        assert 'data-testid="insider"' not in page
        assert (await set_insider(stack, account["account_id"], {"insider": True}))[0] == 200
        await priced_with(stack, account["key"], "5/4")
        await call(stack, account["key"], 1)

        async def shown() -> str:
            _, page = await browser.get("/subscription")
            return page if 'data-testid="multiplier"' in page else ""

        page = await eventually(shown, within=30, interval=0.5)
        plan = page.split('aria-label="Plan"', 1)[1].split("</section>", 1)[0]
        assert '<p data-testid="insider"><strong>Insider</strong> · value per Flow ×1.25</p>' in plan
        assert ">×1.25</small>" in page
    finally:
        await browser.close()


async def test_billing_ends_a_lapsed_insider_without_waiting_for_a_payment(stack: Stack) -> None:
    await asyncio.to_thread(stack.billing.stop)
    await asyncio.to_thread(stack.billing.start, {"FLOWPLAN_INSIDER_SWEEP_S": "0.5"})
    now = datetime.now(UTC)
    paid_at = now - timedelta(days=40)
    account = await paid_account(stack, "lapsed-quietly", paid_at=paid_at.isoformat())
    status, _ = await set_insider(stack, account["account_id"], {"insider": True, "effective_at": paid_at.isoformat()})
    assert status == 200

    async def ended() -> list[InsiderStatusEnded]:
        return await ended_events(stack, account["account_id"])

    [event] = await eventually(ended, within=30)
    assert event.occurred_at == add_months(paid_at, 1)
    await priced_with(stack, account["key"], "1")
    usage = await stack.usage(account["key"])
    assert usage["plan"] == "free" and usage["insider"] is False
    assert_priced(await call(stack, account["key"], 1), Fraction(1))
    await asyncio.sleep(1.5)  # a few more sweeps: the end is recorded once
    assert len(await ended_events(stack, account["account_id"])) == 1


async def test_a_flow_rate_change_shows_on_the_next_load_of_the_pricing_page(stack: Stack) -> None:
    async def pricing() -> str:
        async with aiohttp.ClientSession() as session, session.get(f"{stack.console_url}/pricing") as response:
            assert response.status == 200
            return await response.text()

    async def set_rate(usd_per_flow: str) -> None:
        status, body = await stack.http(
            "POST", "/admin/v1/flow-rate", token=stack.settings.admin_token, json={"usd_per_flow": usd_per_flow}
        )
        assert status in (200, 201), body

    page = await pricing()
    assert "$54.55" in page and "2.73×" in page and "$327.27" in page
    await set_rate("1/40")
    try:

        async def repriced() -> str:
            page = await pricing()
            return page if "$54.00" in page else ""

        page = await eventually(repriced)
        assert "2.70×" in page and "$324.00" in page and "3.24×" in page and "$54.55" not in page
    finally:
        await set_rate("10/396")  # back to the default for whatever runs next

    async def restored() -> str:
        page = await pricing()
        return page if "$54.55" in page else ""

    await eventually(restored)
