"""Property (issue 10, item 8): whatever is thrown at any public ingress route (control characters,
huge numbers, odd or deep JSON, wrong types, out-of-range dates, odd path segments and queries), the
answer is never a 5xx, every error is JSON with a code, a refused request stores nothing, and no
event accepted along the way dead-letters in a projection.

The routes are read from the app's own route table (IngressApi.routes), so a route added later is
thrown at too; each gets the credential its family needs (ingest token, admin token, the account's
key) most of the time, and a missing or wrong one now and then.
"""

import asyncio
import json
from datetime import UTC
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import nats
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.ingress.api import IngressApi
from tests.integration.conftest import dead_letters, settled
from tests.stack import Stack, usage_event

pytestmark = pytest.mark.connected


def public_routes() -> list[tuple[str, str]]:
    app = web.Application()
    IngressApi.__new__(IngressApi).routes(app)  # registering routes needs no connections
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD" and r.resource})


ROUTES = public_routes()
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
            depth = draw(st.integers(1, 3000))
            body = (
                ("[" * depth + "]" * depth).encode()
                if draw(st.booleans())
                else ('{"a":' * depth + "1" + "}" * depth).encode()
            )
        elif shape == "bytes":
            body = draw(st.binary(max_size=200))
    return method, url, token, body


async def stream_seq(nc: nats.aio.client.Client, stream: str) -> int:
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
async def accounts(stack: Stack) -> dict[str, str]:
    """Account A is the caller of the account routes (on Free: never refundable, nothing settles
    behind the test's back); B is the admin routes' target."""
    a, b = await stack.create_account("hostile-a"), await stack.create_account("hostile-b")
    return {
        "a": a["account_id"], "b": b["account_id"], "key": a.get("management_key", a["key"]),
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
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=requests(method, path, accounts))
    def property_(request: tuple[str, str, str | None, bytes | None]) -> None:
        asyncio.run(throw(stack, request))

    property_()


async def test_nothing_accepted_along_the_way_dead_lettered(stack: Stack, dlq_before: int) -> None:
    await settled(stack)
    assert await dead_letters(stack) == dlq_before
    status, _ = await stack.http("GET", "/healthz")
    assert status == 200  # and the stack still answers after all of it
