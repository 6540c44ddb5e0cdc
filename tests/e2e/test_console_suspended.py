"""A suspended account's owner, through the console (README "The console"): every change is
refused with 403 account_suspended, as for the account's keys; the owner may still read. Ingress
learns the suspension from the keys service (keys.access), cached and dropped on keys.changed."""

import asyncio
from datetime import UTC, datetime

import pytest

from libs import ownerpass
from services.ingress.suspensions import Suspensions
from tests.e2e.conftest import new_owner
from tests.stack import Stack

pytestmark = pytest.mark.connected
SUSPENDED = "this account is suspended; contact support"


async def set_suspended(stack: Stack, account_id: str, suspended: bool) -> None:
    verb = "suspend" if suspended else "unsuspend"
    status, body = await stack.http("POST", f"/admin/v1/accounts/{account_id}/{verb}", token=stack.settings.admin_token)
    assert status == 200 and body["suspended"] is suspended, body


async def test_a_suspended_owner_changes_nothing_through_the_console_but_still_reads(stack: Stack) -> None:
    account, browser = await new_owner(stack)
    try:
        status, payg = await stack.http(
            "POST", "/v1/keys", token=account["management_key"], json={"name": "payg", "kind": "payg"}
        )
        assert status == 201, payg
        await set_suspended(stack, account["account_id"], True)

        changes = [
            ("/keys", {"name": "more", "kind": "subscription"}),
            (f"/keys/{account['key_id']}/rotate", {}),
            (f"/keys/{account['key_id']}/revoke", {}),
            ("/extra-usage", {"enabled": "true", "payg_key_id": payg["id"]}),
            ("/checkout", {"plan": "pro"}),
            ("/checkout", {"topup_usd": "10"}),
            ("/refunds", {}),
        ]
        for path, form in changes:
            response = await browser.post(path, form, csrf_from="/subscription")
            assert response.status == 403, path
            assert SUSPENDED in await response.text(), path
        status, page = await browser.get("/subscription")  # reads stay open to the owner, who is told
        assert status == 200 and account["account_id"] in page and 'data-testid="account-suspended"' in page
        _, keys = await stack.http("GET", "/v1/keys", token=account["management_key"])  # the key itself: refused
        assert keys["error"]["code"] == "account_suspended"

        # The same through the account API with the console's pass: a change 403, a read 200.
        owner = ownerpass.mint(stack.settings.console_secret, account["account_id"], datetime.now(UTC))
        status, body = await stack.http("POST", "/v1/keys", token=owner, json={"name": "x", "kind": "payg"})
        assert status == 403 and body["error"]["code"] == "account_suspended"
        status, body = await stack.http("GET", "/v1/keys", token=owner)
        assert status == 200 and {k["name"] for k in body["data"]} == {"default", "management", "payg"}

        # Lifted: the next change goes through (no waiting for a cache to age).
        await set_suspended(stack, account["account_id"], False)
        response = await browser.post("/keys", {"name": "after", "kind": "subscription"}, csrf_from="/subscription")
        page = await response.text()
        assert response.status == 200 and "sk-ss-v1-" in page and 'data-testid="account-suspended"' not in page
    finally:
        await browser.close()


async def test_ingress_hears_a_suspension_from_the_keys_broadcast_not_only_from_its_cache_ageing(
    stack: Stack,
) -> None:
    """A second ingress (here, its cache in this process) that did not send the suspension learns it
    from keys.changed: with an hour's max age, only the broadcast can make it ask again."""
    account = await stack.create_account("broadcast")
    nc = await stack.nats()
    try:
        suspensions = Suspensions(nc, max_age_s=3600)
        await suspensions.start()
        assert await suspensions.suspended(account["account_id"]) is False
        await set_suspended(stack, account["account_id"], True)
        deadline = datetime.now(UTC).timestamp() + 20
        while not await suspensions.suspended(account["account_id"]):
            assert datetime.now(UTC).timestamp() < deadline, "the broadcast never dropped the cached answer"
            await asyncio.sleep(0.05)
        await set_suspended(stack, account["account_id"], False)
        deadline = datetime.now(UTC).timestamp() + 20
        while await suspensions.suspended(account["account_id"]):
            assert datetime.now(UTC).timestamp() < deadline, "the broadcast never dropped the cached answer"
            await asyncio.sleep(0.05)
    finally:
        await nc.close()
