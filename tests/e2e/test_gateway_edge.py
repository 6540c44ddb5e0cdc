"""The gateway's edge against hostile or broken peers: clients that send no key, deep or
ambiguous JSON, trickled headers or bodies, floods of minted keys; upstreams whose errors carry
the operator's secrets. Every answer is JSON in the SDK's own shape and the official SDKs raise
their typed errors. Real NATS, Postgres and services; the upstream is a small local server."""

import asyncio
import inspect
import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp import web
from multidict import CIMultiDict
from nats.aio.msg import Msg

from libs import apikeys
from libs.localservers import free_port
from proto.v1 import subjects
from services.gateway.meter import HEAD_WAIT_S
from tests.stack import ROOT, Stack, eventually

pytestmark = pytest.mark.connected
FREE_MODEL = "deepseek/deepseek-chat"
PRO_CLAUDE = "anthropic/claude-sonnet-4.5"
SECRET_ORG = "org-OPERATORSECRET42"
SECRET_KEY = "sk-proj-UPSTREAMSECRET...x9Qz"
DEAD_PORT = free_port()
HEADER_TIMEOUT_S, BODY_TIMEOUT_S, MAX_DEPTH, UNKNOWN_BURST = 3, 3, 32, 10


@dataclass
class MockUpstream:
    """An OpenAI- and Anthropic-speaking upstream whose answer depends on `scenario:<status>` in
    the body, and whose every answer (errors too) carries the operator's secrets."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        leaky = {"openai-organization": SECRET_ORG, "x-upstream-key": SECRET_KEY, "set-cookie": "session=abc",
                 "x-ratelimit-limit-tokens": "30000000", "request-id": "req_upstream_1"}  # fmt: skip
        text = json.dumps(body)
        for status in (400, 401, 404, 429, 500, 529):
            if f"scenario:{status}" in text:
                headers = {**leaky, "retry-after": "7"} if status == 429 else leaky
                error = {"error": {"message": f"Organization {SECRET_ORG} used key {SECRET_KEY}", "type": "x"}}
                return web.json_response(error, status=status, headers=headers)
        if body.get("stream") is True and request.path == "/v1/chat/completions":
            return await self.stream(request, body)
        if request.path == "/v1/messages":
            reply: dict[str, Any] = {
                "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 5, "output_tokens": 1},
            }  # fmt: skip
        else:
            reply = {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }  # fmt: skip
        return web.json_response(reply, headers=leaky)

    async def stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        """A chat stream whose head goes out at once and whose events all come together after
        `scenario:start-<ms>` milliseconds (aiohttp's StreamResponse sends the head at prepare)."""
        text = json.dumps(body)
        starts_after = re.search(r"scenario:start-(\d+)", text)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(int(starts_after.group(1)) / 1000 if starts_after else 0)
        chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**chunk, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
        ]  # fmt: skip
        await response.write(b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events) + b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@pytest.fixture(scope="module")
async def upstream() -> AsyncIterator[MockUpstream]:
    mock = MockUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", mock.handle)
    app.router.add_post("/v1/messages", mock.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    mock.url = f"http://127.0.0.1:{port}"
    yield mock
    await runner.cleanup()


@pytest.fixture(scope="module")
async def gw(stack: Stack, upstream: MockUpstream) -> Stack:
    """The module's stack with its gateway restarted on tight edge settings and the mock upstream
    serving the deepseek and anthropic models."""
    await asyncio.to_thread(stack.gateway.stop)
    await asyncio.to_thread(stack.gateway.start, edge_env(upstream))
    return stack


def edge_env(upstream: MockUpstream) -> dict[str, str]:
    config = {vendor: {"url": upstream.url, "key": SECRET_KEY} for vendor in ("deepseek", "anthropic")}
    config["inclusionai"] = {"url": f"http://127.0.0.1:{DEAD_PORT}", "key": SECRET_KEY}  # nobody listens
    return {
        "FLOWPLAN_UPSTREAMS": json.dumps(config),
        "FLOWPLAN_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "FLOWPLAN_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "FLOWPLAN_MAX_JSON_DEPTH": str(MAX_DEPTH),
        "FLOWPLAN_UNKNOWN_KEY_BURST": str(UNKNOWN_BURST),
        "FLOWPLAN_UNKNOWN_KEY_RATE_PER_S": "0.1",
    }


def oai(stack: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=key, max_retries=0)


def claude(stack: Stack, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=stack.gateway_url, api_key=key, max_retries=0)


async def post(
    stack: Stack, path: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], CIMultiDict[str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.gateway_url + path, data=data, headers=headers or {}) as response,
    ):
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json(), CIMultiDict(response.headers)


async def pro_account(stack: Stack) -> dict[str, str]:
    account = await stack.create_account("edge-pro")
    await stack.pay(account["account_id"], "pro", "20.00")

    async def is_pro() -> bool:
        return (await stack.usage(account["key"]))["plan"] == "pro"

    await eventually(is_pro)
    return account


def hi(model: str = FREE_MODEL, content: str = "hi") -> dict[str, Any]:
    return {"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": content}]}


# -- before authentication -------------------------------------------------------------


async def test_an_unauthenticated_body_of_a_thousand_brackets_is_a_401_in_the_sdk_shape(gw: Stack) -> None:
    status, body, headers = await post(gw, "/v1/chat/completions", b"[" * 1000)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert headers["x-request-id"].startswith("req_")
    minted = apikeys.generate("subscription")
    status, body, _ = await post(gw, "/v1/chat/completions", b"[" * 1000, {"Authorization": f"Bearer {minted}"})
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    status, body, _ = await post(gw, "/v1/messages", b"[" * 1000, {"anthropic-version": "2023-06-01"})
    assert status == 401 and body["type"] == "error" and body["error"]["type"] == "authentication_error"


async def test_an_unauthenticated_body_is_never_read(gw: Stack) -> None:
    """A body far over the size limit, without a key: the answer is the 401, not the 413 that
    reading it would give."""
    too_big = b" " * (gw.settings.max_body_bytes + 1)
    status, body, _ = await post(gw, "/v1/chat/completions", too_big)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


async def test_the_servers_own_errors_are_in_the_sdk_shape(gw: Stack) -> None:
    account = await gw.create_account("edge-routes")
    auth = {"Authorization": f"Bearer {account['key']}"}
    async with aiohttp.ClientSession(headers=auth) as session:
        async with session.get(f"{gw.gateway_url}/v1/no-such-route") as response:
            assert response.status == 404 and response.content_type == "application/json"
            assert (await response.json())["error"]["type"] == "invalid_request_error"
        async with session.get(f"{gw.gateway_url}/v1/chat/completions") as response:
            assert response.status == 405 and "POST" in response.headers["allow"]
            assert (await response.json())["error"]["code"] == "method_not_allowed"
        async with session.delete(f"{gw.gateway_url}/v1/messages", headers={"anthropic-version": "2023-06-01"}) as r:
            assert r.status == 405 and (await r.json())["type"] == "error"
        async with session.post(f"{gw.gateway_url}/v1/chat/completions",
                                data=b" " * (gw.settings.max_body_bytes + 1)) as response:  # fmt: skip
            assert response.status == 413 and (await response.json())["error"]["code"] == "request_too_large"
    with pytest.raises(openai.NotFoundError):
        await oai(gw, account["key"]).get("/no-such-route", cast_to=object)


async def test_the_gateway_serves_its_openapi_document_to_anyone(gw: Stack) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{gw.gateway_url}/openapi.json") as response:
        assert response.status == 200 and response.content_type == "application/json"
        assert await response.read() == (ROOT / "services" / "gateway" / "openapi.json").read_bytes()


# -- parsing the body as the upstream will ---------------------------------------------


async def test_deep_nesting_is_a_400_in_the_sdk_shape(gw: Stack, upstream: MockUpstream) -> None:
    account = await gw.create_account("edge-deep")
    seen = len(upstream.bodies)
    auth = {"Authorization": f"Bearer {account['key']}"}
    for depth in (MAX_DEPTH + 1, 1000, 100_000):
        nested = b'{"model": "deepseek/deepseek-chat", "x": ' + b"[" * depth + b"]" * depth + b"}"
        status, body, _ = await post(gw, "/v1/chat/completions", nested, auth)
        assert status == 400 and body["error"]["type"] == "invalid_request_error", body
        assert f"more than {MAX_DEPTH} deep" in body["error"]["message"]
    status, body, _ = await post(gw, "/v1/chat/completions", b"[" * 1000, auth)
    assert status == 400 and body["error"]["code"] == "invalid_request"
    deep: Any = "leaf"
    for _ in range(MAX_DEPTH):
        deep = [deep]
    with pytest.raises(openai.BadRequestError):
        await oai(gw, account["key"]).chat.completions.create(**hi(), extra_body={"metadata": {"x": deep}})
    with pytest.raises(anthropic.BadRequestError):
        await claude(gw, account["key"]).messages.create(**hi(PRO_CLAUDE), extra_body={"metadata": {"x": deep}})
    assert len(upstream.bodies) == seen


async def test_duplicate_model_or_stream_keys_and_non_boolean_stream_are_refused(
    gw: Stack, upstream: MockUpstream
) -> None:
    account = await gw.create_account("edge-dupes")
    seen = len(upstream.bodies)
    auth = {"Authorization": f"Bearer {account['key']}"}
    twice = b'{"model": "openai/gpt-5-pro", "messages": [], "model": "deepseek/deepseek-chat"}'
    status, body, _ = await post(gw, "/v1/chat/completions", twice, auth)
    assert status == 400 and body["error"]["param"] == "model"
    twice = b'{"model": "deepseek/deepseek-chat", "stream": false, "messages": [], "stream": true}'
    status, body, _ = await post(gw, "/v1/chat/completions", twice, auth)
    assert status == 400 and body["error"]["param"] == "stream"
    for stream in (1, "true"):
        with pytest.raises(openai.BadRequestError) as refused:
            await oai(gw, account["key"]).chat.completions.create(**hi(), extra_body={"stream": stream})
        assert refused.value.param == "stream"
    with pytest.raises(anthropic.BadRequestError):
        await claude(gw, account["key"]).messages.create(**hi(PRO_CLAUDE), extra_body={"stream": "yes"})
    assert len(upstream.bodies) == seen  # nothing ambiguous reached the upstream


# -- upstream errors ---------------------------------------------------------------------


def assert_no_secrets(body: object, headers: Mapping[str, str]) -> None:
    text = json.dumps(body) + json.dumps(dict(headers))
    assert SECRET_ORG not in text and "UPSTREAMSECRET" not in text and "session=abc" not in text
    assert not {"openai-organization", "x-upstream-key", "set-cookie", "request-id", "x-ratelimit-limit-tokens"} & {
        name.lower() for name in headers
    }


async def test_upstream_errors_are_mapped_and_never_echoed(gw: Stack, upstream: MockUpstream) -> None:
    cases = {400: 400, 404: 404, 429: 429, 401: 502, 500: 502, 529: 502}
    for stream in (False, True):  # an account each: within the plan's 10 requests a minute
        account = await gw.create_account("edge-upstream")
        auth = {"Authorization": f"Bearer {account['key']}"}
        for upstream_status, status in cases.items():
            call = {**hi(content=f"scenario:{upstream_status}"), "stream": stream}
            got, body, headers = await post(gw, "/v1/chat/completions", json.dumps(call).encode(), auth)
            assert got == status, (upstream_status, body)
            assert body["error"]["type"] in {"invalid_request_error", "rate_limit_error", "api_error"}
            assert_no_secrets(body, headers)
            rid = headers["x-request-id"]
            assert rid in body["error"]["message"]
            assert headers.get("retry-after") == ("7" if status == 429 else None)
            assert headers["x-flowplan-billing-mode"] == "subscription"
            if (upstream_status, stream) == (429, True):  # the original is in the log, under that id
                await eventually(lambda: asyncio.to_thread(lambda: rid in gw.gateway.log()))  # noqa: B023
                line = next(line for line in gw.gateway.log().splitlines() if rid in line)
                assert SECRET_ORG in line and "429" in line


async def test_an_upstream_that_does_not_answer_is_a_502_that_does_not_name_it(gw: Stack) -> None:
    account = await gw.create_account("edge-dead")
    with pytest.raises(openai.InternalServerError) as failed:
        await oai(gw, account["key"]).chat.completions.create(**hi("inclusionai/ling-1t"))
    assert failed.value.status_code == 502
    text = json.dumps(failed.value.body)
    assert str(DEAD_PORT) not in text and "127.0.0.1" not in text
    assert failed.value.response.headers["x-request-id"] in text


async def test_upstream_errors_surface_as_the_sdks_typed_errors(gw: Stack) -> None:
    account = await pro_account(gw)
    client, messages = oai(gw, account["key"]), claude(gw, account["key"])
    with pytest.raises(openai.RateLimitError) as limited:
        await client.chat.completions.create(**hi(content="scenario:429"))
    assert limited.value.response.headers["retry-after"] == "7"
    assert_no_secrets(limited.value.body, limited.value.response.headers)
    with pytest.raises(openai.InternalServerError) as failed:
        await client.chat.completions.create(**hi(content="scenario:500"), stream=True)
    assert failed.value.status_code == 502
    with pytest.raises(anthropic.BadRequestError) as rejected:
        await messages.messages.create(**hi(PRO_CLAUDE, "scenario:400"))
    assert_no_secrets(rejected.value.body, rejected.value.response.headers)
    with pytest.raises(anthropic.InternalServerError):
        await messages.messages.create(**hi(PRO_CLAUDE, "scenario:401"))
    with pytest.raises(anthropic.RateLimitError):
        await messages.messages.create(**hi(PRO_CLAUDE, "scenario:429"), stream=True)


async def test_a_success_passes_only_safe_upstream_headers(gw: Stack) -> None:
    account = await pro_account(gw)
    raw = await oai(gw, account["key"]).chat.completions.with_raw_response.create(**hi())
    assert raw.parse().choices[0].message.content == "ok"
    assert_no_secrets({}, raw.headers)
    assert raw.headers["content-type"].startswith("application/json") and raw.headers["x-request-id"]
    reply = await claude(gw, account["key"]).messages.with_raw_response.create(**hi(PRO_CLAUDE))
    message = reply.parse()
    message = await message if inspect.isawaitable(message) else message
    assert message.content[0].text == "ok"
    assert_no_secrets({}, reply.headers)


# -- slow clients ----------------------------------------------------------------------


async def cut_within(stack: Stack, head: bytes, trickle: bytes, within: float) -> bytes:
    """Send `head`, then `trickle` a byte every 0.3 s; what the gateway answered before it closed
    the connection, which it must do within `within` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.gateway_port)
    writer.write(head)
    answered = bytearray()

    async def dribble() -> None:
        for byte in trickle:
            await asyncio.sleep(0.3)
            if answered or writer.is_closing():
                return
            writer.write(bytes([byte]))
            await writer.drain()

    sender = asyncio.create_task(dribble())
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while chunk := await reader.read(65536):
                answered += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass
    finally:
        sender.cancel()
        writer.close()
    assert time.monotonic() - started < within
    return bytes(answered)


async def test_a_client_trickling_its_headers_is_cut(gw: Stack) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
    answered = await cut_within(gw, head, b"X-Slow: " + b"a" * 200, within=HEADER_TIMEOUT_S + 15)
    assert answered == b""


async def test_a_client_trickling_its_body_is_cut_with_a_408(gw: Stack) -> None:
    account = await gw.create_account("edge-slow")
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + account["key"].encode() + b"\r\nContent-Length: 1000\r\n\r\n{"
    )
    answered = await cut_within(gw, head, b" " * 999, within=BODY_TIMEOUT_S + 15)
    assert answered.startswith(b"HTTP/1.1 408"), answered
    assert b'"code":"request_timeout"' in answered


# -- slow upstreams -----------------------------------------------------------------------


async def first_read_of_a_stream(stack: Stack, starts_after_ms: int) -> tuple[bytes, float]:
    """A streamed call over a plain socket to an upstream whose events start after `starts_after_ms`:
    what the client's first read got, and after how many seconds."""
    account = await stack.create_account("edge-stream")
    body = json.dumps({**hi(content=f"scenario:start-{starts_after_ms}"), "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.settings.gateway_port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (account["key"].encode(), len(body), body)
    )
    started = time.monotonic()
    try:
        first = await asyncio.wait_for(reader.read(65536), 10)
        return first, time.monotonic() - started
    finally:
        writer.close()


async def test_a_stream_s_head_goes_out_with_its_first_events(gw: Stack) -> None:
    """One write and one wake-up of the client for both, not the head alone and then the events."""
    first, _ = await first_read_of_a_stream(gw, starts_after_ms=200)
    assert first.startswith(b"HTTP/1.1 200") and b"text/event-stream" in first
    assert b"data: {" in first and b"chatcmpl-1" in first, first


async def test_an_upstream_slow_to_start_does_not_hold_back_the_stream_s_head(gw: Stack) -> None:
    first, after_s = await first_read_of_a_stream(gw, starts_after_ms=3000)
    assert first.startswith(b"HTTP/1.1 200") and b"data:" not in first
    assert after_s < HEAD_WAIT_S + 2  # the events came after 3 s


async def test_a_stream_the_gateway_cannot_read_is_cut_and_what_was_streamed_is_billed(
    gw: Stack, upstream: MockUpstream
) -> None:
    """An event no relay or translator can read (a failpoint raises as the first chunk is read: the
    translations themselves read anything, tests/unit/test_translate_streams_hostile.py): the
    client's stream is cut rather than ended well, and what was counted is metered, as the upstream
    bills it. A reading error must not make the call free."""
    account = await gw.create_account("edge-unreadable")
    await asyncio.to_thread(gw.gateway.stop)
    await asyncio.to_thread(gw.gateway.start, {**edge_env(upstream), "FLOWPLAN_FAILPOINT": "unreadable_stream"})
    try:
        with pytest.raises(openai.APIConnectionError):
            stream = await oai(gw, account["key"]).responses.create(model=FREE_MODEL, input="hi", stream=True)
            async for _ in stream:
                pass
    finally:
        await asyncio.to_thread(gw.gateway.stop)
        await asyncio.to_thread(gw.gateway.start, edge_env(upstream))

    async def metered() -> dict[str, Any] | None:
        conn = await gw.db()
        try:
            row = await conn.fetchrow(
                "SELECT count(*) AS calls, sum(output_tokens) AS output FROM quota.usage WHERE account_id = $1",
                account["account_id"],
            )
        finally:
            await conn.close()
        return dict(row) if row["calls"] else None

    assert (await eventually(metered))["calls"] == 1
    assert "failpoint unreadable_stream: fired" in gw.gateway.log()


# -- a flood of minted keys (last: it leaves this address throttled) -----------------


async def test_a_flood_of_minted_keys_from_one_address_costs_bounded_lookups(gw: Stack) -> None:
    account = await gw.create_account("edge-flood")
    client = oai(gw, account["key"])
    await client.models.list()  # a key in use: known to the gateway before the flood
    lookups: list[bytes] = []

    async def count(msg: Msg) -> None:
        lookups.append(msg.data)

    nc = await gw.nats()
    await nc.subscribe(subjects.KEY_LOOKUP, cb=count)
    await nc.flush()
    started = time.monotonic()
    statuses: list[int] = []
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            headers = {"Authorization": f"Bearer {apikeys.generate('subscription')}"}
            async with session.post(f"{gw.gateway_url}/v1/chat/completions", data=b"[" * 1000, headers=headers) as r:
                body = await r.json()
                statuses.append(r.status)
                if r.status == 429:
                    assert body["error"]["code"] == "too_many_unknown_keys" and int(r.headers["retry-after"]) >= 1

        for _ in range(10):
            await asyncio.gather(*(one() for _ in range(50)))
    elapsed = time.monotonic() - started
    await nc.flush()
    await asyncio.sleep(0.5)
    await nc.close()
    assert set(statuses) <= {401, 429} and statuses.count(429) >= 500 - UNKNOWN_BURST - 0.1 * elapsed - 1
    assert len(lookups) <= UNKNOWN_BURST + 0.1 * elapsed + 1, (len(lookups), elapsed)
    with pytest.raises(openai.RateLimitError):
        await oai(gw, apikeys.generate("subscription")).models.list()
    # The key in use goes on working from the same address.
    await asyncio.sleep(1.1)
    assert [m async for m in client.models.list()]


async def test_the_account_api_throttles_minted_keys_the_same_way(gw: Stack) -> None:
    """Ingress shares the key cache (defaults here: a burst of 20 per address)."""
    lookups: list[bytes] = []

    async def count(msg: Msg) -> None:
        lookups.append(msg.data)

    nc = await gw.nats()
    await nc.subscribe(subjects.KEY_LOOKUP, cb=count)
    await nc.flush()
    started = time.monotonic()
    answers = [await gw.http("GET", "/v1/account/usage", token=apikeys.generate("payg")) for _ in range(60)]
    elapsed = time.monotonic() - started
    await nc.flush()
    await asyncio.sleep(0.5)
    await nc.close()
    assert {status for status, _ in answers} == {401, 429}
    assert answers[-1][1]["error"] == {
        "code": "too_many_unknown_keys", "field": "Authorization", "message": answers[-1][1]["error"]["message"],
    }  # fmt: skip
    assert len(lookups) <= gw.settings.unknown_key_burst + gw.settings.unknown_key_rate_per_s * elapsed + 1
