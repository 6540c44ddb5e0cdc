"""The key lifecycle through ingress's key API and the keys service, over real servers."""

import uuid

import pytest

from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected


async def test_create_list_rotate_revoke(stack: Stack) -> None:
    account = await stack.create_account()
    key = account["management_key"]
    status, created = await stack.http("POST", "/v1/keys", token=key, json={"name": "laptop", "kind": "payg"})
    assert status == 201
    assert created["key"].startswith("sk-pg-v1-") and created["prefix"] == "sk-pg-v1-"
    assert created["last4"] == created["key"][-4:] and created["kind"] == "payg"
    status, listing = await stack.http("GET", "/v1/keys", token=key)
    assert status == 200
    assert [k["name"] for k in listing["data"]] == ["default", "management", "laptop"]
    assert all("key" not in k for k in listing["data"])  # a secret is shown once, at creation
    status, rotated = await stack.http("POST", f"/v1/keys/{created['id']}/rotate", token=key)
    assert status == 201 and rotated["key"] != created["key"] and rotated["id"] == created["id"]
    status, _ = await stack.http("GET", "/v1/account/usage", token=created["key"])
    assert status == 401
    status, _ = await stack.http("GET", "/v1/account/usage", token=rotated["key"])
    assert status == 200
    status, revoked = await stack.http("DELETE", f"/v1/keys/{created['id']}", token=key)
    assert status == 200 and revoked["revoked"] is True and revoked["revoked_at"]
    status, _ = await stack.http("GET", "/v1/account/usage", token=rotated["key"])
    assert status == 401
    status, body = await stack.http("POST", f"/v1/keys/{created['id']}/rotate", token=key)
    assert status == 409 and body["error"]["code"] == "key_revoked"


async def test_keys_of_other_accounts_are_not_found_and_bad_input_is_named(stack: Stack) -> None:
    mine = await stack.create_account()
    theirs = await stack.create_account()
    for method, path in (("POST", f"/v1/keys/{theirs['key_id']}/rotate"), ("DELETE", f"/v1/keys/{theirs['key_id']}")):
        status, body = await stack.http(method, path, token=mine["management_key"])
        assert status == 404 and body["error"]["code"] == "key_not_found"
    status, body = await stack.http("POST", "/v1/keys", token=mine["management_key"], json={"name": "", "kind": "payg"})
    assert status == 400 and body["error"]["field"] == "name"
    status, body = await stack.http(
        "POST", "/v1/keys", token=mine["management_key"], json={"name": "x", "kind": "gold"}
    )
    assert status == 400 and body["error"]["field"] == "kind"
    status, _ = await stack.http("GET", "/v1/keys", token=theirs["key"][:-2] + "zz")
    assert status == 401


async def test_last_used_is_coalesced_not_one_row_update_per_call(stack: Stack) -> None:
    account = await stack.create_account()
    conn = await stack.db()
    try:
        # Count the row updates the keys projection makes, with a trigger of the test's own.
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS public.key_updates (key_id text, n bigint DEFAULT 1);
               CREATE OR REPLACE FUNCTION public.count_key_update() RETURNS trigger AS $$
               BEGIN INSERT INTO public.key_updates (key_id) VALUES (NEW.key_id); RETURN NEW; END $$
               LANGUAGE plpgsql;
               DROP TRIGGER IF EXISTS count_key_updates ON keys.keys;
               CREATE TRIGGER count_key_updates AFTER UPDATE ON keys.keys
               FOR EACH ROW EXECUTE FUNCTION public.count_key_update();"""
        )
        calls = [usage_event(account["account_id"], key_id=account["key_id"], event_id=uuid.uuid4().hex)
                 for _ in range(1000)]  # fmt: skip
        assert (await stack.post_usage(calls))[0] == 202

        async def used() -> bool:
            _, keys = await stack.http("GET", "/v1/keys", token=account["key"])
            return bool(keys["data"][0]["last_used_at"])

        await eventually(used)
        updates = await conn.fetchval("SELECT count(*) FROM public.key_updates WHERE key_id = $1", account["key_id"])
        assert 1 <= updates <= 10  # one per projection batch, not 1,000
    finally:
        await conn.execute("DROP TRIGGER IF EXISTS count_key_updates ON keys.keys")
        await conn.close()
