"""Abuse signals (SPEC §1 "Insiders and abuse", §4): the gateway records keyed hashes of the
client's address (from X-Forwarded-For only behind a trusted proxy) and user agent with each
call, never the address; billing's projection keeps the evidence; GET /admin/v1/abuse/signals
lists the accounts highest first, each signal with its evidence, and ordinary accounts score 0."""

import asyncio
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, time, timedelta
from fractions import Fraction
from typing import Any

import aiohttp
import pytest

from libs import apikeys
from libs.pricing.flows import price_call
from proto.v1 import UsageRecorded, decode_event
from tests.e2e.conftest import CATALOG, FREE_MODEL, PASSWORD, metered, token
from tests.stack import ROOT, Stack, eventually, usage_event

pytestmark = pytest.mark.connected
POOL_ADDRESS = "203.0.113.7"  # a documentation address: only ever a header value here
AGENT = "pooled-client/1.0"


@pytest.fixture(scope="module")
async def proxied(stack: Stack) -> Stack:
    """The gateway, ingress and console behind a trusted proxy on loopback: X-Forwarded-For names the client."""
    for service in (stack.gateway, stack.ingress, stack.console):
        await asyncio.to_thread(service.stop)
        await asyncio.to_thread(service.start, {"FLOWPLAN_TRUSTED_PROXIES": "127.0.0.1"})
    return stack


async def chat(stack: Stack, key: str, address: str, agent: str = AGENT) -> None:
    body = {"model": FREE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": address, "User-Agent": agent}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.gateway_url}/v1/chat/completions", json=body, headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        await response.read()


async def signals(stack: Stack, query: str = "") -> tuple[int, Any]:
    return await stack.http("GET", f"/admin/v1/abuse/signals{query}", token=stack.settings.admin_token)


def by_id(listed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["account_id"]: a for a in listed}


async def test_pooled_accounts_and_round_the_clock_use_top_the_signals_with_their_evidence(proxied: Stack) -> None:
    stack = proxied
    pool = [await stack.create_account(f"pool-{i}") for i in range(5)]
    ordinary = [await stack.create_account(f"ordinary-{i}") for i in range(2)]
    clock = await stack.create_account("clock")
    rotating = await stack.create_account("rotating")

    for _ in range(2):  # the five accounts in rotation, from one client address
        for account in pool:
            await chat(stack, account["key"], POOL_ADDRESS)
    for i, account in enumerate(ordinary):  # each from its own address, one of them twice
        for _ in range(i + 1):
            await chat(stack, account["key"], f"198.51.100.{10 + i}", agent=f"sdk/{i}")
    keys = [rotating["key"]]
    for name in ("second", "third"):
        status, key = await stack.http(
            "POST", "/v1/keys", token=rotating["management_key"], json={"name": name, "kind": "subscription"}
        )
        assert status == 201, key
        keys.append(key["key"])
    for i, key in enumerate(keys):  # three keys, three clients
        await chat(stack, key, f"192.0.2.{20 + i}")

    # Four whole UTC days before today, every hour, near a Free account's daily use (7.2 Flows).
    model = CATALOG.models[FREE_MODEL]
    per_1k = price_call(model, input_tokens=1000, output_tokens=0, usd_per_flow=CATALOG.default_usd_per_flow,
                        multiplier=Fraction(1)).flows_micros  # fmt: skip
    overhead = model.request_flows_micros
    tokens = int(1000 * (330_000 - overhead) / (per_1k - overhead))  # ~0.33 Flows a call: ~7.9 Flows a day
    today = datetime.combine(datetime.now(UTC).date(), time(0), tzinfo=UTC)
    days = [today - timedelta(days=d) for d in range(4, 0, -1)]
    backdated = [
        usage_event(clock["account_id"], input_tokens=tokens, output_tokens=0,
                    occurred_at=(day + timedelta(hours=h, minutes=30)).isoformat())
        for day in days for h in range(24)
    ]  # fmt: skip
    assert (await stack.post_usage(backdated))[0] == 202

    async def listed() -> list[dict[str, Any]]:
        status, body = await signals(stack)
        assert status == 200, body
        found = by_id(body["data"])
        wanted = [a["account_id"] for a in [*pool, clock, rotating]]
        return body["data"] if all(a in found for a in wanted) and found[clock["account_id"]]["score"] >= 40 else []

    top = await eventually(listed, within=30, interval=0.5)
    pooled = {a["account_id"] for a in pool}
    assert {a["account_id"] for a in top[:6]} == pooled | {clock["account_id"]}
    assert [a["score"] for a in top] == sorted((a["score"] for a in top), reverse=True)
    for account in top[:6]:
        if account["account_id"] in pooled:
            [signal] = account["signals"]
            assert signal["kind"] == "shared_client_address" and account["score"] == 60
            assert set(signal["accounts"]) == pooled - {account["account_id"]}
            assert signal["count"] == 2 and len(signal["evidence"]["calls_by_account"]) == 5
            assert POOL_ADDRESS not in str(signal)  # the evidence names a keyed hash, never the address
            assert signal["first_seen"] <= signal["last_seen"]
    clock_signal = by_id(top)[clock["account_id"]]["signals"][0]
    assert clock_signal["kind"] == "around_the_clock" and clock_signal["count"] == 4
    assert [line.split(":")[0] for line in clock_signal["evidence"]["days"]] == [d.date().isoformat() for d in days]
    assert all(": 24 h," in line for line in clock_signal["evidence"]["days"])
    assert clock_signal["first_seen"].startswith(days[0].date().isoformat())
    rotating_signal = by_id(top)[rotating["account_id"]]["signals"][0]
    assert rotating_signal["kind"] == "keys_across_clients" and rotating_signal["count"] == 3
    assert by_id(top)[rotating["account_id"]]["score"] < 40

    # Ordinary accounts score zero: listed only when asked for everything.
    assert not {a["account_id"] for a in ordinary} & set(by_id(top))
    status, everything = await signals(stack, "?min_score=0")
    assert status == 200
    for account in ordinary:
        assert by_id(everything["data"])[account["account_id"]] == {
            "account_id": account["account_id"], "score": 0, "signals": []
        }  # fmt: skip
    status, high = await signals(stack, "?min_score=50")
    assert {a["account_id"] for a in high["data"]} == pooled

    # The Grafana panel of top accounts shows the same two at its top, from the projection's tables.
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "billing.json").read_text())
    [panel] = [p for p in dashboard["panels"] if p["title"].startswith("Abuse evidence: top accounts")]
    conn = await stack.db()
    try:
        rows = await conn.fetch(panel["targets"][0]["rawSql"])
    finally:
        await conn.close()
    assert {r["account_id"] for r in rows[:5]} == pooled and {r["accounts_sharing_clients"] for r in rows[:5]} == {4}
    assert rows[5]["account_id"] == clock["account_id"] and rows[5]["active_hours_7d"] == 4 * 24
    assert {r["account_id"] for r in rows if r["accounts_sharing_clients"]} == pooled


async def test_the_log_holds_keyed_hashes_of_the_client_never_its_address(proxied: Stack) -> None:
    stack = proxied
    account = await stack.create_account("hashed")
    await chat(stack, account["key"], f"1.2.3.4, {POOL_ADDRESS}")  # a client-sent hop, then the proxy's
    [event] = await metered(stack, account["key"], 1)
    nc = await stack.nats()
    try:
        js = nc.jetstream()
        message = await js.get_last_msg(stack.settings.stream, f"flowplan.p.*.usage.{account['account_id']}.*")
    finally:
        await nc.close()
    recorded = decode_event(message.data or b"")
    assert isinstance(recorded, UsageRecorded) and recorded.source == "gateway"
    key = stack.settings.client_hash_key.encode()
    expected = hmac.new(key, f"addr:{POOL_ADDRESS}".encode(), hashlib.sha256).hexdigest()[:32]
    assert recorded.client_hash == expected  # the nearest hop the trusted proxy added, not the client's claim
    assert recorded.agent_hash == hmac.new(key, f"ua:{AGENT}".encode(), hashlib.sha256).hexdigest()[:32]
    assert POOL_ADDRESS.encode() not in (message.data or b"") and b"1.2.3.4" not in (message.data or b"")
    assert event["model"] == FREE_MODEL


async def test_bad_signal_queries_are_4xx_naming_the_field(proxied: Stack) -> None:
    for query in ("?min_score=high", "?min_score=-1", "?min_score=101", "?limit=0"):
        status, body = await signals(proxied, query)
        assert status == 400, (query, body)
        assert body["error"]["field"] == query[1:].split("=")[0]
    status, body = await proxied.http("GET", "/admin/v1/abuse/signals")
    assert status == 401, body


@pytest.mark.parametrize("service", ["gateway", "ingress"])
async def test_behind_a_trusted_proxy_minted_keys_throttle_their_own_client_not_the_proxys_others(
    proxied: Stack, service: str
) -> None:
    """The unknown-key limit (the gateway's, and ingress's account API's) counts per client as the
    trusted proxy names it: a flood of minted keys from one client behind the proxy does not refuse
    the first call of a new key from another."""
    flooder, other = (
        ("198.51.100.200", "198.51.100.201") if service == "gateway" else ("198.51.100.210", "198.51.100.211")
    )
    burst = proxied.settings.unknown_key_burst

    async def minted_call(address: str) -> tuple[int, Any]:
        kind = "subscription" if service == "gateway" else "management"
        headers = {"Authorization": f"Bearer {apikeys.generate(kind)}", "X-Forwarded-For": address}
        async with aiohttp.ClientSession(headers=headers) as session:
            if service == "gateway":
                request = session.post(f"{proxied.gateway_url}/v1/chat/completions", data=b"{}")
            else:
                request = session.get(f"{proxied.base}/v1/account/usage")
            async with request as response:
                return response.status, await response.json()

    answers = [await minted_call(f"10.1.1.1, {flooder}") for _ in range(burst + 10)]  # its own claim comes first
    assert [status for status, _ in answers].count(429) >= 9, answers
    assert answers[-1][1]["error"]["code"] == "too_many_unknown_keys"
    status, body = await minted_call(other)
    assert (status, body["error"]["code"]) == (401, "invalid_api_key"), body  # looked up: not the flooder's bucket
    status, body = await minted_call(f"{other}, {flooder}")  # the proxy named the flooder: its bucket
    assert status == 429, body


async def test_the_console_s_sign_up_limit_counts_per_client_behind_a_trusted_proxy(proxied: Stack) -> None:
    """The console's per-address limits (sign-ups per hour, sign-in failures) count the client the
    proxy names: one client using up its sign-ups leaves another behind the same proxy its own."""
    first, other = "198.51.100.220", "198.51.100.221"

    async def sign_up(address: str) -> int:
        headers = {"X-Forwarded-For": address}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers) as session:
            async with session.get(f"{proxied.console_url}/sign-up") as page:
                csrf = token(await page.text())
            form = {"email": f"proxied-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD, "csrf": csrf}
            async with session.post(f"{proxied.console_url}/sign-up", data=form) as response:
                return response.status

    statuses = [await sign_up(first) for _ in range(proxied.settings.sign_ups_per_hour + 1)]
    assert statuses == [202] * proxied.settings.sign_ups_per_hour + [429], statuses
    assert await sign_up(other) == 202  # its own budget, not the proxy's
