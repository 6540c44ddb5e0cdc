"""Property (issue 10, item 8): whatever is thrown at any public route of ingress or the gateway
(control characters, huge numbers, odd or deep JSON, wrong types, out-of-range dates, odd path
segments and queries), the answer is never a 5xx, every error is JSON with a code (in the SDK's
shape, on the gateway), a refused request stores nothing, and no event accepted along the way
dead-letters in a projection. On the gateway a call answered 200 stored exactly its one usage event.

The routes are read from the apps' own route tables (IngressApi.routes, GatewayApi.routes), so a
route added later is thrown at too; each gets the credential its family needs (ingest token, admin
token, the account's key) most of the time, and a missing or wrong one now and then.
"""

import asyncio
import json
import uuid
from datetime import UTC
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import msgspec
import nats
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from nats.aio.client import Client

from libs import apikeys
from libs.localservers import LocalNats, LocalPostgres
from libs.settings import Settings
from libs.setup import set_up
from services.gateway.api import GatewayApi
from services.ingress.api import IngressApi
from tests.integration.conftest import dead_letters, out_of_reach_plans, settled
from tests.stack import Stack, make_settings, usage_event

pytestmark = pytest.mark.connected


def public_routes(api: type[IngressApi] | type[GatewayApi]) -> list[tuple[str, str]]:
    app = web.Application()
    instance = api.__new__(api)  # registering routes needs no connections, nor a pipeline to run calls

    async def run(request: web.Request, client: object) -> None: ...

    instance.pipeline = SimpleNamespace(run=run)  # type: ignore[union-attr]
    instance.routes(app)
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource})


ROUTES = public_routes(IngressApi)
GATEWAY_ROUTES = public_routes(GatewayApi)
PUBLIC = {"/v1/plans", "/v1/models"}

controls = st.text(st.characters(codec="utf-8", categories=["Cc"]), min_size=1, max_size=3)
texts = st.one_of(
    st.text(max_size=40),
    st.tuples(st.text(max_size=8), controls, st.text(max_size=8)).map("".join),
    st.sampled_from(["\x00", "a\x00b", "", " ", "..", "../../etc", "%00", "acc_", "null", "\u202e", "x" * 300]),
)
"""Short enough that a URL of a few stays under the HTTP parser's 8 KB request line (past it,
aiohttp itself answers 400 before any route runs)."""
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**24]),
    st.floats(allow_nan=False, allow_infinity=False),
)
number_texts = st.sampled_from(
    ["1e24", "1e-24", "9" * 30, "0.0000001", "-5", "0", "1/0", "1/3", "5/198", "1e400", "0x10", "1,5", " 2 "]
)
dates = st.one_of(
    st.sampled_from(
        [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "1969-12-31T23:59:59Z",
            "2026-13-01T00:00:00Z",
            "0001-01-01",
            "9999-12-31",
            "2026-01-01T00:00:00",
            "2026-01-01T00:00:00+14:00",
            "yesterday",
        ]
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
values = st.one_of(texts, numbers, number_texts, dates, json_values)
body_values = st.one_of(values, st.just("x" * 100_000))
depths = st.one_of(st.integers(1, 100), st.sampled_from([1000, 3000, 100_000]))
"""How deep a "deep" body nests: around the gateway's limit (64), and past Python's recursion limit,
which Hypothesis's bias towards small integers would seldom reach on its own."""
segments = st.one_of(texts, st.sampled_from(["acc_0000000000000000", "key_0000000000000000", "a.b", "*", ">"]))


def templates(accounts: dict[str, str]) -> dict[tuple[str, str], Any]:
    """A valid body per route that takes one, for the generator to spoil a field or two of."""
    return {
        ("POST", "/v1/usage"): {"events": [usage_event(accounts["a"])]},
        ("POST", "/v1/keys"): {"name": "k", "kind": "subscription"},
        ("PUT", "/v1/account/extra-usage"): {"enabled": False},
        ("POST", "/admin/v1/accounts"): {"name": "n", "multiplier": "1"},
        ("POST", "/admin/v1/accounts/{account_id}/payments"): {
            "plan": "pro",
            "amount_usd": "20.00",
            "payment_ref": "r",
        },
        ("PUT", "/admin/v1/accounts/{account_id}/multiplier"): {"multiplier": "1"},
        ("PUT", "/admin/v1/accounts/{account_id}/insider"): {"insider": False},
        ("POST", "/admin/v1/flow-rate"): {"usd_per_flow": "5/198"},
        ("POST", "/admin/v1/accounts/{account_id}/balance"): {"amount_usd": "1.00"},
        ("PUT", "/admin/v1/payment-provider"): {"fail_payouts": False},
    }


def spoil(template: Any, draw: Any) -> Any:
    """The template with one or two of its leaves (in the usage record, too) replaced or dropped,
    or an unknown field added."""
    body = json.loads(json.dumps(template))
    target = body["events"][0] if "events" in body else body
    for _ in range(draw(st.integers(1, 2))):
        action = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
        name = draw(st.sampled_from(sorted(target) or ["x"]))
        if action == "replace":
            target[name] = draw(body_values)
        elif action == "drop":
            target.pop(name, None)
        else:
            target[draw(st.text(max_size=10))] = draw(values)
    return body


@st.composite
def requests(draw: Any, method: str, path: str, accounts: dict[str, str]) -> tuple[str, str, str | None, bytes | None]:
    url = path
    if "{account_id}" in url:
        target = draw(st.one_of(st.just(accounts["b"]), segments))
        url = url.replace("{account_id}", quote(target, safe=""))
    for name in ("{key_id}", "{refund_id}"):
        url = url.replace(name, quote(draw(segments), safe="") or "x")
    names = st.sampled_from(["limit", "group_by", "from", "to", "min_score"])
    query = draw(
        st.lists(st.tuples(names | texts, st.one_of(texts, number_texts, dates, numbers.map(str))), max_size=3)
    )
    query += draw(st.lists(st.tuples(names, dates), max_size=1))
    if query:
        url += "?" + urlencode(query, quote_via=quote)
    who = draw(st.sampled_from(["right"] * 5 + ["none", "wrong"]))
    if path == "/v1/usage":
        token: str | None = accounts["ingest"]
    elif path.startswith("/admin/"):
        token = accounts["admin"]
    else:
        token = None if path in PUBLIC else accounts["key"]
    token = {"right": token, "none": None, "wrong": "sk-ss-v1-" + "A" * 40}[who]
    body: bytes | None = None
    if method in ("POST", "PUT", "PATCH"):
        template = templates(accounts).get((method, path))
        shape = draw(st.sampled_from(["spoiled"] * 4 + ["json", "deep", "bytes"]) if template else
                     st.sampled_from(["json", "deep", "bytes", "empty"]))  # fmt: skip
        if shape == "spoiled":  # non-ASCII raw or escaped: a raw DEL or C1 character is valid JSON
            body = json.dumps(spoil(template, draw), ensure_ascii=draw(st.booleans())).encode()
        elif shape == "json":
            body = json.dumps(draw(json_values)).encode()
        elif shape == "deep":
            depth = draw(depths)
            body = (
                ("[" * depth + "]" * depth).encode()
                if draw(st.booleans())
                else ('{"a":' * depth + "1" + "}" * depth).encode()
            )
        elif shape == "bytes":
            body = draw(st.binary(max_size=200))
    return method, url, token, body


async def stream_seq(nc: Client, stream: str) -> int:
    return int((await nc.jetstream().stream_info(stream)).state.last_seq)


async def throw(stack: Stack, request: tuple[str, str, str | None, bytes | None]) -> None:
    method, url, token, body = request
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    nc = await nats.connect(stack.settings.nats_url)
    try:
        before = await stream_seq(nc, stack.settings.stream)
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, stack.base + url, data=body, headers=headers) as response,
        ):
            raw = await response.read()
            status = response.status
        after = await stream_seq(nc, stack.settings.stream)
    finally:
        await nc.close()
    assert status < 500, (method, url, body and body[:300], status, raw[:500])
    if status >= 400:
        error = json.loads(raw)["error"]
        assert isinstance(error["code"], str) and error["code"], (url, raw[:500])
        assert isinstance(error.get("field", ""), str)
        assert after == before, ("a refused request stored events", method, url, body and body[:300], raw[:500])


@pytest.fixture(scope="module")
async def settings(nats_server: LocalNats, postgres: LocalPostgres, workdir: Path) -> Settings:
    """Plans whose RPM and caps the examples never reach: a gateway call gets as far as the upstream."""
    base = postgres.url.rsplit("/", 1)[0]
    settings = make_settings(nats_server.url, f"{base}/flowplan_{uuid.uuid4().hex[:10]}")
    settings = msgspec.structs.replace(settings, plans_path=out_of_reach_plans(workdir))
    await set_up(settings)
    return settings


@pytest.fixture(scope="module")
async def accounts(stack: Stack) -> dict[str, str]:
    """Account A is the caller of the account routes (on Free: never refundable, nothing settles
    behind the test's back); B is the admin routes' target."""
    a, b = await stack.create_account("hostile-a"), await stack.create_account("hostile-b")
    return {
        "a": a["account_id"], "b": b["account_id"], "key": a.get("management_key", a["key"]), "model_key": a["key"],
        "ingest": stack.settings.ingest_token, "admin": stack.settings.admin_token,
    }  # fmt: skip


@pytest.fixture(scope="module")
async def dlq_before(stack: Stack) -> int:
    return await dead_letters(stack)


def test_every_public_route_is_covered() -> None:
    assert ("POST", "/v1/usage") in ROUTES and ("GET", "/v1/refunds/{refund_id}") in ROUTES
    assert any(path.startswith("/admin/") for _, path in ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_hostile_input_is_a_clean_4xx_and_stores_nothing(
    stack: Stack, accounts: dict[str, str], dlq_before: int, method: str, path: str
) -> None:
    @examples(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=requests(method, path, accounts))
    def property_(request: tuple[str, str, str | None, bytes | None]) -> None:
        asyncio.run(throw(stack, request))

    property_()


# -- the gateway ---------------------------------------------------------------------------

GATEWAY_TEMPLATES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "deepseek/deepseek-chat", "max_tokens": 8, "stream": False,
        "messages": [{"role": "user", "content": "hi [[tokens:4]]"}],
    },
    "/v1/messages": {  # deepseek's upstream speaks chat only: translated both ways
        "model": "deepseek/deepseek-chat", "max_tokens": 8, "system": "be brief",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi [[tokens:4]]"}]}],
    },
    "/v1/responses": {"model": "openai/gpt-5-mini", "input": "hi [[tokens:4]]", "max_output_tokens": 8},
    "/v1/images/generations": {"model": "nanobanana/nanobanana-pro", "prompt": "a fox", "n": 1},
    "/v1/messages/count_tokens": {
        "model": "anthropic/claude-sonnet-4.5", "messages": [{"role": "user", "content": "hi"}],
    },
}  # fmt: skip
MODELS = ["deepseek/deepseek-chat", "anthropic/claude-sonnet-4.5", "openai/gpt-5-mini", "nanobanana/nanobanana-pro"]
gateway_values: st.SearchStrategy[Any] = st.one_of(
    values,
    st.sampled_from(MODELS),
    st.sampled_from([True, False, 0, 1, -1, 2**31, 10**30, 1e308, "true", None, [], {}]),
)


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value a generator may spoil: its containers' members, at any depth."""
    places: list[tuple[Any, ...]] = []
    members = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, member in members:
        places.append((*path, name))
        places += leaves(member, (*path, name))
    return places


def spoil_anywhere(template: Any, draw: Any) -> Any:
    """The template with one or two members, at any depth, replaced or dropped, or a member added."""
    body = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(1, 2))):
        places = leaves(body)
        place = draw(st.sampled_from(places)) if places else ("x",)
        parent = body
        for name in place[:-1]:
            parent = parent[name]
        action = draw(st.sampled_from(["replace", "replace", "replace", "drop", "add"]))
        if action == "replace":
            parent[place[-1]] = draw(st.one_of(gateway_values, st.just("x" * 100_000)))
        elif action == "drop":
            del parent[place[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(["stream", "model", "n", "max_tokens"]) | st.text(max_size=10))] = draw(
                gateway_values
            )
        else:
            parent.append(draw(gateway_values))
    return body


@st.composite
def gateway_requests(
    draw: Any, method: str, path: str, accounts: dict[str, str]
) -> tuple[str, str, dict[str, str], bytes | None]:
    url, headers = path, {}
    if method == "GET":
        query = draw(
            st.lists(st.tuples(st.sampled_from(["limit", "after_id", "before_id"]) | texts, texts), max_size=3)
        )
        if query:
            url += "?" + urlencode(query, quote_via=quote)
    who = draw(st.sampled_from(["model key"] * 4 + ["payg key", "management key", "minted", "none"]))
    if who != "none":
        secret = {"model key": accounts["model_key"], "payg key": accounts["payg_key"],
                  "management key": accounts["key"], "minted": apikeys.generate("subscription")}[who]  # fmt: skip
        if draw(st.booleans()):
            headers["Authorization"] = f"Bearer {secret}"
        else:
            headers["x-api-key"] = secret
    if draw(st.booleans()):
        headers["anthropic-version"] = draw(st.sampled_from(["2023-06-01", "", "x"]))
    body: bytes | None = None
    if method == "POST":
        shape = draw(st.sampled_from(["spoiled"] * 5 + ["json", "deep", "bytes", "empty"]))
        if shape == "spoiled":
            body = json.dumps(spoil_anywhere(GATEWAY_TEMPLATES[path], draw), ensure_ascii=draw(st.booleans())).encode()
        elif shape == "json":
            body = json.dumps(draw(json_values)).encode()
        elif shape == "deep":
            depth = draw(depths)
            body = ('{"model":"deepseek/deepseek-chat","x":' + "[" * depth + "]" * depth + "}").encode()
        elif shape == "bytes":
            body = draw(st.binary(max_size=200))
        if body is not None:
            headers["Content-Type"] = "application/json"
    return method, url, headers, body


async def usage_events_of(nc: Client, stack: Stack, account_ids: list[str]) -> int:
    """How many usage events of the accounts the log holds."""
    js = nc.jetstream()
    total = 0
    for account_id in account_ids:
        subject = f"flowplan.p.*.usage.{account_id}.UsageRecorded"
        info = await js.stream_info(stack.settings.stream, subjects_filter=subject)
        total += sum((info.state.subjects or {}).values())
    return total


def sdk_shaped(path: str, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
    """The error of an answer, in the shape of the SDK that calls the route (the model list: the
    SDK its anthropic-version header names); its `error` member."""
    body = json.loads(raw)
    if path.startswith("/v1/messages") or (path.startswith("/v1/models") and "anthropic-version" in headers):
        assert body["type"] == "error", raw[:500]
    error = body["error"]
    assert isinstance(error["type"], str) and isinstance(error["message"], str) and error["code"], raw[:500]
    return dict(error)


async def throw_at_gateway(
    stack: Stack, accounts: dict[str, str], request: tuple[str, str, dict[str, str], bytes | None]
) -> None:
    method, url, headers, body = request
    mine = [accounts["a"]]
    nc = await nats.connect(stack.settings.nats_url)
    try:
        before, usage_before = await stream_seq(nc, stack.settings.stream), await usage_events_of(nc, stack, mine)
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, stack.gateway_url + url, data=body, headers=headers) as response,
        ):
            raw = await response.read()  # a stream, to its end
            status = response.status
        after, usage_after = await stream_seq(nc, stack.settings.stream), await usage_events_of(nc, stack, mine)
    finally:
        await nc.close()
    what = (method, url, sorted(headers), body and body[:300], status, raw[:500])
    assert status < 500, what
    metered = method == "POST" and url != "/v1/messages/count_tokens"
    if status == 200 and metered:
        assert (after - before, usage_after - usage_before) == (1, 1), ("a call answered 200 stored", what)
    else:
        assert after == before, ("a call not answered 200 stored events", what)
    if status >= 400:
        sdk_shaped(url, headers, raw)


@pytest.fixture(scope="module")
async def callers(stack: Stack, accounts: dict[str, str]) -> dict[str, str]:
    """An account of its own (A's changes this minute went on the account routes' examples, and the
    change limit is one budget in Postgres) on Pro, with a model key and a PAYG key with a balance;
    the simulator unpaced."""
    await asyncio.to_thread(stack.simulator.stop)
    await asyncio.to_thread(stack.simulator.start, {"FLOWPLAN_SIMULATOR_TOKENS_PER_S": "0"})
    caller = await stack.create_account("hostile-gateway")
    management = caller.get("management_key", caller["key"])
    await stack.pay(caller["account_id"], "pro", "20.00")
    status, payg = await stack.http("POST", "/v1/keys", token=management, json={"name": "p", "kind": "payg"})
    assert status == 201, payg
    status, body = await stack.http("POST", f"/admin/v1/accounts/{caller['account_id']}/balance",
                                    token=accounts["admin"], json={"amount_usd": "50.00"})  # fmt: skip
    assert status == 201, body
    return {**accounts, "a": caller["account_id"], "key": management, "model_key": caller["key"],
            "payg_key": payg["key"]}  # fmt: skip


@pytest.mark.parametrize(("method", "path"), GATEWAY_ROUTES, ids=[f"{m} {p}" for m, p in GATEWAY_ROUTES])
def test_hostile_input_at_the_gateway_is_a_clean_4xx_in_the_sdk_shape_and_stores_nothing(
    stack: Stack, callers: dict[str, str], dlq_before: int, method: str, path: str
) -> None:
    @examples(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=gateway_requests(method, path, callers))
    def property_(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
        asyncio.run(throw_at_gateway(stack, callers, request))

    property_()


async def test_nothing_accepted_along_the_way_dead_lettered(stack: Stack, dlq_before: int) -> None:
    await settled(stack)
    assert await dead_letters(stack) == dlq_before
    status, _ = await stack.http("GET", "/healthz")
    assert status == 200  # and the stack still answers after all of it
