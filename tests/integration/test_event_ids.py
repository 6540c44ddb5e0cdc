"""Event ids cannot collide across sources (issue 10, item 9): a usage event_id is the metering
client's own, scoped by client and account; ids the platform derives are out of a client's reach;
a top-up without topup_ref is idempotent through its Idempotency-Key, also across a 503."""

import os
import signal
import uuid
from typing import Any

import aiohttp
import msgspec
import pytest

from libs.localservers import LocalNats, LocalPostgres
from libs.settings import Settings
from libs.setup import set_up
from services.billing.domain import event_id as derived_event_id
from tests.stack import Stack, eventually, make_settings, usage_event

pytestmark = pytest.mark.connected
PARTNER_TOKEN = "test-partner-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
async def settings(nats_server: LocalNats, postgres: LocalPostgres) -> Settings:
    """The suite's settings, with a second metering client, "partner", beside the default one."""
    base = postgres.url.rsplit("/", 1)[0]
    settings = make_settings(nats_server.url, f"{base}/flowplan_{uuid.uuid4().hex[:10]}")
    settings = msgspec.structs.replace(settings, ingest_tokens=f"partner={PARTNER_TOKEN}")
    await set_up(settings)
    return settings


async def post_usage(stack: Stack, token: str, events: list[dict[str, Any]]) -> tuple[int, Any]:
    return await stack.http("POST", "/v1/usage", token=token, json={"events": events})


async def listed_ids(stack: Stack, key: str) -> list[str]:
    status, body = await stack.http("GET", "/v1/account/usage/events?limit=100", token=key)
    assert status == 200, body
    return sorted(e["event_id"] for e in body["data"])


async def test_the_same_event_id_from_two_clients_or_for_two_accounts_is_two_events(stack: Stack) -> None:
    a, b = await stack.create_account("a"), await stack.create_account("b")
    ingest = stack.settings.ingest_token
    one_a, one_b = usage_event(a["account_id"], event_id="1"), usage_event(b["account_id"], event_id="1")
    assert await post_usage(stack, ingest, [one_a]) == (202, {"accepted": 1, "duplicates": 0})
    # Another client's "1" for another account, the first client's "1" for another account, and
    # another client's "1" for the same account: each is an event of its own.
    assert await post_usage(stack, PARTNER_TOKEN, [one_b]) == (202, {"accepted": 1, "duplicates": 0})
    assert await post_usage(stack, ingest, [one_b]) == (202, {"accepted": 1, "duplicates": 0})
    assert await post_usage(stack, PARTNER_TOKEN, [one_a]) == (202, {"accepted": 1, "duplicates": 0})
    # One client's "1" for one account sent again is the same event, from either batch position.
    assert await post_usage(stack, ingest, [one_a, one_b]) == (202, {"accepted": 0, "duplicates": 2})
    # One batch may carry the same id for two accounts.
    two_a, two_b = usage_event(a["account_id"], event_id="2"), usage_event(b["account_id"], event_id="2")
    assert await post_usage(stack, ingest, [two_a, two_b]) == (202, {"accepted": 2, "duplicates": 0})

    async def listed() -> bool:
        return await listed_ids(stack, a["key"]) == ["1", "1", "2"] and await listed_ids(stack, b["key"]) == [
            "1",
            "1",
            "2",
        ]

    await eventually(listed)  # each account's listing shows the client's own ids


async def test_an_id_claimed_before_ids_were_scoped_is_still_a_duplicate_for_the_default_client(stack: Stack) -> None:
    """Rows in ingress.seen_events from before the upgrade hold the bare id (one ingest token then):
    a retry that straddles the upgrade must not count twice."""
    account = await stack.create_account()
    legacy = "legacy-" + uuid.uuid4().hex
    conn = await stack.db()
    try:
        await conn.execute("INSERT INTO ingress.seen_events (event_id) VALUES ($1)", legacy)
    finally:
        await conn.close()
    event = usage_event(account["account_id"], event_id=legacy)
    assert await post_usage(stack, stack.settings.ingest_token, [event]) == (202, {"accepted": 0, "duplicates": 1})
    # The partner client never sent it before: its "legacy-…" is an event of its own.
    assert await post_usage(stack, PARTNER_TOKEN, [event]) == (202, {"accepted": 1, "duplicates": 0})


async def test_an_unknown_ingest_token_is_refused(stack: Stack) -> None:
    account = await stack.create_account()
    status, body = await post_usage(stack, "partner", [usage_event(account["account_id"])])
    assert (status, body["error"]["field"]) == (401, "Authorization")
    status, body = await post_usage(stack, stack.settings.admin_token, [usage_event(account["account_id"])])
    assert status == 401


async def balance_and_topups(stack: Stack, key: str) -> tuple[str, list[dict[str, Any]]]:
    status, body = await stack.http("GET", "/v1/billing/history", token=key)
    assert status == 200, body
    return body["balance_usd"], [e for e in body["data"] if e["type"] == "top_up"]


async def test_a_client_cannot_take_the_id_of_a_top_up(stack: Stack) -> None:
    """Top-up ids are derived from (account, topup_ref), which anyone may guess; a metering client
    sending that id first must not swallow the top-up (billing's ledger and JetStream's duplicate
    window both dedupe by event id)."""
    account = await stack.create_account()
    ref = "invoice-42"
    taken = derived_event_id("topup", account["account_id"], ref)
    usage = usage_event(account["account_id"], event_id=taken, billing_mode="payg", input_tokens=10, output_tokens=1)
    assert (await stack.post_usage([usage]))[0] == 202
    status, reply = await stack.http(
        "POST",
        f"/admin/v1/accounts/{account['account_id']}/balance",
        token=stack.settings.admin_token,
        json={"amount_usd": "25.00", "topup_ref": ref},
    )
    assert status == 201, reply

    async def credited() -> bool:
        _, topups = await balance_and_topups(stack, account["key"])
        return [t["reference"] for t in topups] == [ref]

    await eventually(credited, within=10)


async def top_up(stack: Stack, account_id: str, amount: str, idempotency_key: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {stack.settings.admin_token}"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.base}/admin/v1/accounts/{account_id}/balance", json={"amount_usd": amount}, headers=headers
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def fenced_topups(stack: Stack, account: dict[str, str]) -> list[dict[str, Any]]:
    """The account's top-ups (fences aside) once billing has applied everything before a fresh
    "fence" top-up (billing decides one account's commands in order, each after its projection
    caught up, so whatever was credited before the fence shows with it)."""
    fence = "fence-" + uuid.uuid4().hex
    status, reply = await stack.http(
        "POST",
        f"/admin/v1/accounts/{account['account_id']}/balance",
        token=stack.settings.admin_token,
        json={"amount_usd": "0.01", "topup_ref": fence},
    )
    assert status == 201, reply

    async def seen() -> list[dict[str, Any]] | None:
        _, topups = await balance_and_topups(stack, account["key"])
        return topups if fence in {t["reference"] for t in topups} else None

    topups = await eventually(seen, within=10)
    return [t for t in topups if not t["reference"].startswith("fence-")]


async def test_a_top_up_sent_again_with_its_idempotency_key_credits_once(stack: Stack) -> None:
    account = await stack.create_account()
    key = "retry-" + uuid.uuid4().hex
    first = await top_up(stack, account["account_id"], "10.00", key)
    again = await top_up(stack, account["account_id"], "10.00", key)
    assert first[0] == again[0] == 201, (first, again)
    assert first[1]["topup_ref"] == again[1]["topup_ref"] == key
    conflict = await top_up(stack, account["account_id"], "11.00", key)
    assert (conflict[0], conflict[1]["error"]["field"]) == (409, "topup_ref")
    assert len(await fenced_topups(stack, account)) == 1
    # Without a key (and without topup_ref) each request is a top-up of its own, as before.
    assert (await top_up(stack, account["account_id"], "1.00", None))[0] == 201
    assert (await top_up(stack, account["account_id"], "1.00", None))[0] == 201
    assert len(await fenced_topups(stack, account)) == 3
    status, body = await top_up(stack, account["account_id"], "1.00", "k" * 201)
    assert (status, body["error"]["field"]) == (400, "Idempotency-Key")


async def test_a_top_up_retried_after_a_503_credits_once(stack: Stack) -> None:
    """billing is frozen: ingress gives up and answers 503 (retry); billing then wakes, reads the
    request and credits it. The client's retry with the same Idempotency-Key must not credit again."""
    account = await stack.create_account()
    key = "retry-" + uuid.uuid4().hex
    assert stack.billing.process is not None
    pid = stack.billing.process.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        status, body = await top_up(stack, account["account_id"], "7.00", key)
        assert (status, body["error"]["code"]) == (503, "billing_unavailable"), body
    finally:
        os.kill(pid, signal.SIGCONT)
    status, body = await top_up(stack, account["account_id"], "7.00", key)
    assert status == 201, body
    topups = await fenced_topups(stack, account)
    assert [(t["reference"], t["amount_usd"]) for t in topups] == [(key, "7.00")]
