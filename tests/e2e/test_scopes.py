"""Only the owner changes an account (SPEC §1 API keys, §4 account API scopes and admin): model keys
read, management keys change and never call models, suspended accounts are shut out within a
second, the operator revokes any key, and one account's changes are bounded."""

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import msgspec
import nats
import openai
import pytest
from aiohttp import web

from libs import apikeys
from proto.v1 import CreateKey, KeyIssued, encode, subjects
from services.ingress.api import IngressApi
from tests.stack import Stack

pytestmark = pytest.mark.connected
FREE_MODEL = "deepseek/deepseek-chat"
HI = {"model": FREE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
NOT_ACCOUNT_ROUTES = {"/v1/usage", "/v1/webhooks/payments"}
"""Non-GET /v1 routes that are not the account API (the ingest token's, the payment provider's signed webhook).
Anything else is a change."""
COMMITTED_OPENAPI = (Path(__file__).resolve().parents[2] / "services" / "ingress" / "openapi.json").read_text()


def oai(stack: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=key, max_retries=0)


def claude(stack: Stack, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=stack.gateway_url, api_key=key, max_retries=0)


def account_routes() -> list[tuple[str, str]]:
    """(method, path template) of every /v1 account route, read from ingress's own route table, so
    a route added later is checked without anyone remembering to list it here."""
    app = web.Application()
    IngressApi.routes(IngressApi.__new__(IngressApi), app)
    found = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/v1/") and path not in NOT_ACCOUNT_ROUTES and route.method != "HEAD":
            found.append((route.method, path))
    return found


def filled(path: str, key_id: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: key_id if m.group(1) == "key_id" else "ref_0000", path)


async def with_management_key(stack: Stack, account: dict[str, str], kind: str) -> dict[str, Any]:
    status, created = await stack.http(
        "POST", "/v1/keys", token=account["management_key"], json={"name": kind, "kind": kind}
    )
    assert status == 201, created
    return dict(created)


async def test_model_keys_get_insufficient_scope_on_every_change_route_and_still_read(stack: Stack) -> None:
    account = await stack.create_account("leaky")
    await stack.pay(account["account_id"], "pro", "20.00")
    payg = await with_management_key(stack, account, "payg")
    routes = account_routes()
    changes = [(m, p) for m, p in routes if m != "GET"]
    reads = [(m, p) for m, p in routes if m == "GET"]
    assert {("POST", "/v1/keys"), ("POST", "/v1/keys/{key_id}/rotate"), ("DELETE", "/v1/keys/{key_id}"),
            ("PUT", "/v1/account/extra-usage"), ("POST", "/v1/refunds"),
            ("POST", "/v1/refunds/{refund_id}/cancel")} <= set(changes)  # fmt: skip
    assert {("GET", "/v1/account/usage"), ("GET", "/v1/keys"), ("GET", "/v1/refunds/preview")} <= set(reads)
    body = {"name": "minted", "kind": "subscription", "enabled": True, "payg_key_id": payg["id"]}
    for leaked in (account["key"], payg["key"]):
        for method, path in changes:
            status, reply = await stack.http(method, filled(path, account["key_id"]), token=leaked, json=body)
            assert status == 403, (method, path, reply)
            assert reply["error"]["code"] == "insufficient_scope" and "management key" in reply["error"]["message"]
        for method, path in reads:
            status, reply = await stack.http(method, filled(path, account["key_id"]), token=leaked)
            assert status in (200, 404), (method, path, reply)  # 404: the made-up refund id of the path
            assert status == 200 or reply["error"]["code"] == "refund_not_found"
    # Nothing happened: no key minted or rotated, no refund, Extra Usage still off.
    status, keys = await stack.http("GET", "/v1/keys", token=account["key"])
    assert status == 200 and sorted(k["name"] for k in keys["data"]) == ["default", "management", "payg"]
    assert all(k["revoked_at"] is None for k in keys["data"])
    status, refunds = await stack.http("GET", "/v1/refunds", token=account["key"])
    assert status == 200 and refunds["data"] == []
    assert (await stack.usage(account["key"]))["extra_usage"]["enabled"] is False
    # The leaked key stops at its revocation: it minted nothing that could outlive it.
    status, _ = await stack.http("DELETE", f"/v1/keys/{account['key_id']}", token=account["management_key"])
    assert status == 200
    status, keys = await stack.http("GET", "/v1/keys", token=account["management_key"])
    active = [k for k in keys["data"] if k["revoked_at"] is None]
    assert sorted(k["kind"] for k in active) == ["management", "payg"]
    assert (await stack.http("GET", "/v1/account/usage", token=account["key"]))[0] == 401


async def test_a_management_key_makes_the_changes_and_the_gateway_refuses_it(stack: Stack) -> None:
    account = await stack.create_account("owner")
    assert account["management_key"].startswith("sk-mg-v1-") and account["management_key_id"].startswith("key_")
    manager = account["management_key"]
    status, keys = await stack.http("GET", "/v1/keys", token=manager)
    listed = {k["id"]: k for k in keys["data"]}
    assert status == 200 and listed[account["management_key_id"]]["kind"] == "management"
    assert listed[account["management_key_id"]]["prefix"] == "sk-mg-v1-"
    second = await with_management_key(stack, account, "management")
    assert second["key"].startswith("sk-mg-v1-") and second["kind"] == "management"
    payg = await with_management_key(stack, account, "payg")
    status, extra = await stack.http(
        "PUT", "/v1/account/extra-usage", token=manager, json={"enabled": True, "payg_key_id": payg["id"]}
    )
    assert status == 200 and extra["enabled"] is True
    status, rotated = await stack.http("POST", f"/v1/keys/{second['id']}/rotate", token=manager)
    assert status == 201 and rotated["key"].startswith("sk-mg-v1-")
    assert (await stack.http("GET", "/v1/keys", token=second["key"]))[0] == 401  # rotated away
    assert (await stack.http("GET", "/v1/keys", token=rotated["key"]))[0] == 200
    # The owner cannot lock themselves out: the last management key stays.
    status, _ = await stack.http("DELETE", f"/v1/keys/{rotated['id']}", token=manager)
    assert status == 200
    status, body = await stack.http("DELETE", f"/v1/keys/{account['management_key_id']}", token=manager)
    assert status == 409 and body["error"]["code"] == "last_management_key"

    # Never accepted by the gateway: 403 insufficient_scope in each SDK's shape, for a live key or not.
    await oai(stack, account["key"]).chat.completions.create(**HI)  # the model key works
    made_up = apikeys.generate("management")
    for secret in (manager, rotated["key"], made_up):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await oai(stack, secret).chat.completions.create(**HI)
        assert refused.value.code == "insufficient_scope"
        with pytest.raises(openai.PermissionDeniedError):
            await oai(stack, secret).models.list()
        with pytest.raises(anthropic.PermissionDeniedError) as refused_too:
            await claude(stack, secret).messages.create(
                model="anthropic/claude-sonnet-4.5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert refused_too.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
        assert refused_too.value.body["error"]["code"] == "insufficient_scope"  # type: ignore[index]


async def raw_gateway_call(stack: Stack, key: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.gateway_url}/v1/chat/completions", json=HI, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        return response.status, await response.json(content_type=None)


async def test_suspension_shuts_the_account_out_within_a_second_and_unsuspend_lets_it_back(stack: Stack) -> None:
    account = await stack.create_account("suspect")
    bystander = await stack.create_account("bystander")
    admin = stack.settings.admin_token
    await oai(stack, account["key"]).chat.completions.create(**HI)  # the key is cached by the gateway now
    assert (await stack.http("GET", "/v1/account/usage", token=account["key"]))[0] == 200  # ... and by ingress

    path = f"/admin/v1/accounts/{account['account_id']}"
    status, reply = await stack.http("POST", f"{path}/suspend", token=admin, json={"reason": "resale"})
    assert status == 200 and reply["suspended"] is True and reply["changed"] is True and reply["since"]
    suspended_at = time.monotonic()
    while (await raw_gateway_call(stack, account["key"]))[0] == 200:
        assert time.monotonic() - suspended_at < 1.0, "the gateway still admits a second after the suspension"
        await asyncio.sleep(0.02)
    while (await stack.http("GET", "/v1/account/usage", token=account["key"]))[0] == 200:
        assert time.monotonic() - suspended_at < 1.0, "the account API still reads a second after the suspension"
        await asyncio.sleep(0.02)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await oai(stack, account["key"]).chat.completions.create(**HI)
    assert refused.value.code == "account_suspended"
    with pytest.raises(anthropic.PermissionDeniedError) as refused_too:
        await claude(stack, account["key"]).messages.create(
            model=FREE_MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused_too.value.body["error"]["code"] == "account_suspended"  # type: ignore[index]
    for token, method, route in (
        (account["key"], "GET", "/v1/account/usage"),
        (account["management_key"], "GET", "/v1/keys"),
        (account["management_key"], "POST", "/v1/keys"),
    ):
        status, body = await stack.http(method, route, token=token, json={"name": "x"} if method == "POST" else None)
        assert status == 403 and body["error"]["code"] == "account_suspended", (route, body)
    assert time.monotonic() - suspended_at < 5.0
    await oai(stack, bystander["key"]).chat.completions.create(**HI)  # others are not touched

    status, again = await stack.http("POST", f"{path}/suspend", token=admin)
    assert status == 200 and again["suspended"] is True and again["changed"] is False  # nothing new recorded
    status, lifted = await stack.http("POST", f"{path}/unsuspend", token=admin)
    assert status == 200 and lifted["suspended"] is False and lifted["changed"] is True
    lifted_at = time.monotonic()
    while (await raw_gateway_call(stack, account["key"]))[0] != 200:
        assert time.monotonic() - lifted_at < 1.0, "the gateway still refuses a second after the suspension was lifted"
        await asyncio.sleep(0.02)
    while (await stack.http("GET", "/v1/account/usage", token=account["key"]))[0] != 200:
        assert time.monotonic() - lifted_at < 1.0, "the account API still refuses a second after it was lifted"
        await asyncio.sleep(0.02)
    assert (await stack.http("POST", "/v1/keys", token=account["management_key"], json={"name": "back"}))[0] == 201

    assert (await stack.http("POST", f"{path}/suspend", token="wrong"))[0] == 401
    assert (await stack.http("POST", f"{path}/suspend", token=account["management_key"]))[0] == 401
    status, body = await stack.http("POST", "/admin/v1/accounts/acc_nobody/suspend", token=admin)
    assert status == 404 and body["error"]["field"] == "account_id"
    status, body = await stack.http("POST", f"{path}/suspend", token=admin, json={"reason": 7})
    assert status == 400 and body["error"]["field"] == "reason"


async def test_the_operator_revokes_any_key(stack: Stack) -> None:
    account = await stack.create_account("revoked-by-admin")
    admin = stack.settings.admin_token
    await oai(stack, account["key"]).chat.completions.create(**HI)
    status, revoked = await stack.http("DELETE", f"/admin/v1/keys/{account['key_id']}", token=admin)
    assert status == 200 and revoked["revoked"] is True and revoked["account_id"] == account["account_id"]
    revoked_at = time.monotonic()
    while (await raw_gateway_call(stack, account["key"]))[0] == 200:
        assert time.monotonic() - revoked_at < 1.0
        await asyncio.sleep(0.02)
    with pytest.raises(openai.AuthenticationError):
        await oai(stack, account["key"]).chat.completions.create(**HI)
    # Even the account's last management key (a leaked one, say): the owner could not do that.
    status, _ = await stack.http("DELETE", f"/admin/v1/keys/{account['management_key_id']}", token=admin)
    assert status == 200
    assert (await stack.http("GET", "/v1/keys", token=account["management_key"]))[0] == 401
    status, body = await stack.http("DELETE", f"/admin/v1/keys/{account['key_id']}", token=admin)
    assert status == 409 and body["error"]["code"] == "key_revoked"
    status, body = await stack.http("DELETE", "/admin/v1/keys/key_nobody", token=admin)
    assert status == 404 and body["error"]["code"] == "key_not_found"
    assert (await stack.http("DELETE", "/admin/v1/keys/key_nobody", token=account["key"]))[0] == 401


async def test_the_101st_key_is_refused(stack: Stack) -> None:
    account = await stack.create_account("hoarder")  # two keys: the first model key and the management key
    nc = await nats.connect(stack.settings.nats_url)
    try:  # 98 more straight through the keys service (the account API's change limit is another test's)
        for n in range(98):
            command = CreateKey(account_id=account["account_id"], name=f"k{n}", kind="payg")
            reply = await nc.request(subjects.KEYS_CREATE, encode(command), timeout=5)
            assert msgspec.json.decode(reply.data, type=KeyIssued).key.kind == "payg"
    finally:
        await nc.close()
    manager = account["management_key"]
    status, body = await stack.http("POST", "/v1/keys", token=manager, json={"name": "k101", "kind": "payg"})
    assert status == 409 and body["error"]["code"] == "key_limit_reached" and "100" in body["error"]["message"]
    status, keys = await stack.http("GET", "/v1/keys", token=manager)
    assert status == 200 and len(keys["data"]) == 100
    status, _ = await stack.http("DELETE", f"/v1/keys/{keys['data'][-1]['id']}", token=manager)
    assert status == 200
    status, created = await stack.http("POST", "/v1/keys", token=manager, json={"name": "k100", "kind": "payg"})
    assert status == 201 and created["name"] == "k100"  # room again once one is revoked


async def test_one_accounts_changes_are_rate_limited_and_others_are_not(stack: Stack) -> None:
    flooder = await stack.create_account("flooder")
    other = await stack.create_account("other")
    per_minute = stack.settings.account_changes_per_minute
    statuses: list[int] = []
    retry_after, body = None, {}
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {flooder['management_key']}"}
        for _ in range(per_minute + 20):  # invalid bodies: attempts count, whatever their outcome
            async with session.post(f"{stack.base}/v1/keys", json={"name": ""}, headers=headers) as response:
                statuses.append(response.status)
                if response.status == 429:
                    body = await response.json()
                    retry_after = response.headers.get("retry-after")
                    break
    elapsed = time.monotonic() - started
    assert statuses[:per_minute] == [400] * per_minute  # the burst: one minute's worth at once
    assert statuses[-1] == 429 and body["error"]["code"] == "rate_limit_exceeded", (statuses, elapsed)
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    status, _ = await stack.http("POST", "/v1/keys", token=flooder["management_key"], json={"name": "more"})
    assert status == 429
    assert (await stack.http("GET", "/v1/keys", token=flooder["management_key"]))[0] == 200  # reads are not limited
    status, _ = await stack.http("POST", "/v1/keys", token=other["management_key"], json={"name": "mine"})
    assert status == 201  # another account is not slowed


async def test_ingress_serves_its_openapi_document_and_every_route_in_it_refuses_a_missing_credential(
    stack: Stack,
) -> None:
    """The contract test: the document ingress serves is the committed one, and every route it lists
    exists on the running ingress and answers a request without a credential with the status the
    document gives for that (401; the webhook: 400 for its missing signature; public routes: 200)."""
    status, served = await stack.http("GET", "/openapi.json")
    assert status == 200
    committed = json.loads(COMMITTED_OPENAPI)
    assert served == committed
    called = 0
    for path, methods in served["paths"].items():
        concrete = re.sub(r"\{(\w+)\}", "ref_0000", path)
        for method, operation in methods.items():
            status, body = await stack.http(method.upper(), concrete, data=b"{}")
            if not operation["security"]:
                expected = next(code for code in operation["responses"] if code.startswith("2"))
            elif {"providerSignature": []} in operation["security"]:
                expected = "400"
            else:
                expected = "401"
            assert expected in operation["responses"], (method, path)
            assert str(status) == expected, (method, path, status, body)
            if expected != "200":
                assert body["error"]["code"] in ("unauthorized", "invalid_signature"), (method, path, body)
            called += 1
    assert called == sum(len(methods) for methods in committed["paths"].values()) >= 30
