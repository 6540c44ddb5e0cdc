"""What the e2e modules share: the SDK clients pointed at the stack's gateway, the waits until the
account API shows usage or a refund settled, the PAYG and console owners' set-ups, and the console
fixture. Modules import these from here, never from one another's tests."""

import asyncio
import json
import re
import uuid
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import aiohttp
import anthropic
import msgspec
import openai
import pytest

from libs.eventlog.subjects import STORED_PREFIX
from libs.localservers import LocalNats, LocalPostgres
from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from libs.settings import Settings
from libs.setup import set_up
from tests.stack import Stack, eventually, make_settings, usage_event

CATALOG = load_catalog()
FREE_MODEL = "deepseek/deepseek-chat"
PRO_CLAUDE = "anthropic/claude-sonnet-4.5"


def oai(stack: Stack, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=key, max_retries=0)


def claude(stack: Stack, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=stack.gateway_url, api_key=key, max_retries=0)


def flows_of(model: str, input_tokens: int, output_tokens: int, cached: int = 0, images: int = 0) -> int:
    return price_call(
        CATALOG.models[model], input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached,
        images=images, usd_per_flow=CATALOG.default_usd_per_flow, multiplier=Fraction(1),
    ).flows_micros  # fmt: skip


async def raw_stream(stack: Stack, session: aiohttp.ClientSession, key: str, max_tokens: int) -> aiohttp.ClientResponse:
    """A streamed chat call over plain HTTP, so that a test can hang up or break it mid-stream."""
    response = await session.post(
        f"{stack.gateway_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": FREE_MODEL, "stream": True, "max_tokens": max_tokens,
              "messages": [{"role": "user", "content": f"go on [[tokens:{max_tokens}]]"}]},
    )  # fmt: skip
    assert response.status == 200
    return response


async def metered(stack: Stack, key: str, count: int) -> list[dict]:
    async def listed() -> list[dict]:
        status, body = await stack.http("GET", "/v1/account/usage/events?limit=100", token=key)
        assert status == 200, body
        return body["data"] if len(body["data"]) >= count else []

    return list(await eventually(listed))


async def pro_account(stack: Stack) -> dict[str, str]:
    account = await stack.create_account("pro-user")
    await stack.pay(account["account_id"], "pro", "20.00")

    async def is_pro() -> bool:
        return (await stack.usage(account["key"]))["plan"] == "pro"

    await eventually(is_pro)
    return account


HI = {"model": FREE_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


async def payg_key(stack: Stack, account: dict[str, str]) -> dict[str, str]:
    status, key = await stack.http(
        "POST", "/v1/keys", token=account["management_key"], json={"name": "payg", "kind": "payg"}
    )
    assert status == 201
    return dict(key)


async def top_up(stack: Stack, account_id: str, amount: str) -> None:
    status, body = await stack.http(
        "POST", f"/admin/v1/accounts/{account_id}/balance", token=stack.settings.admin_token,
        json={"amount_usd": amount},
    )  # fmt: skip
    assert status == 201, body


async def balance(stack: Stack, key: str) -> str:
    return str((await stack.usage(key))["extra_usage"]["balance_usd"])


async def refund_of(stack: Stack, key: str, refund_id: str, *, settled: bool = True) -> dict[str, Any]:
    async def fetched() -> dict[str, Any] | None:
        status, body = await stack.http("GET", f"/v1/refunds/{refund_id}", token=key)
        assert status == 200, body
        return body if body["status"] != "processing" or not settled else None

    return dict(await eventually(fetched, within=60))  # settling waits for quota and the log: slow CI


PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def console(stack: Stack) -> Stack:
    """The stack, console included (the common fixture starts it)."""
    return stack


class Browser:
    """A cookie-keeping HTTP client, the way a browser talks to the console (no JavaScript)."""

    def __init__(self, stack: Stack) -> None:
        self.base = stack.console_url
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.base + path, allow_redirects=True) as response:
            return response.status, await response.text()

    async def post(self, path: str, form: dict[str, str], *, csrf_from: str | None = None) -> aiohttp.ClientResponse:
        """POST a form the way the page at `csrf_from` (default: the form's own page) would send it."""
        if csrf_from is not None or "csrf" not in form:
            _, page = await self.get(csrf_from or path)
            form = {"csrf": token(page), **form}
        response = await self.session.post(self.base + path, data=form, allow_redirects=False)
        await response.read()
        return response

    async def close(self) -> None:
        await self.session.close()


def token(page: str) -> str:
    match = _CSRF.search(page)
    assert match, page[:500]
    return match.group(1)


def link_path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


async def new_owner(stack: Stack, email: str | None = None) -> tuple[dict[str, Any], Browser]:
    """An account whose owner used the one-time link to set a password: signed in."""
    email = email or f"owner-{uuid.uuid4().hex[:8]}@example.com"
    status, account = await stack.http(
        "POST", "/admin/v1/accounts", token=stack.settings.admin_token, json={"name": "o", "email": email}
    )
    assert status == 201, account
    browser = Browser(stack)
    response = await browser.post(link_path(account["sign_in_url"]), {"password": PASSWORD})
    assert response.status == 303 and response.headers["Location"] == "/subscription"
    return {**account, "email": email}, browser


GLM = "z-ai/glm-4.7"
CHEAP = "deepseek/deepseek-chat"
TOKENS_PER_S = 200


async def reservation_settings(nats_server: LocalNats, postgres: LocalPostgres) -> Settings:
    base = postgres.url.rsplit("/", 1)[0]
    settings = make_settings(nats_server.url, f"{base}/flowplan_{uuid.uuid4().hex[:10]}")
    settings = msgspec.structs.replace(settings, heartbeat_interval_s=0.5, heartbeat_misses=3)
    await set_up(settings)
    return settings


async def call(
    stack: Stack, key: str, model: str, max_tokens: int, *, stream: bool = False, messages: Any = None
) -> tuple[int, Mapping[str, str], bytes]:
    """One chat call over plain HTTP: (status, headers (case-insensitive), body read to its end)."""
    go_on = [{"role": "user", "content": f"go on [[tokens:{max_tokens}]]"}]  # an exact length
    body = {"model": model, "max_tokens": max_tokens, "stream": stream,
            "messages": messages if messages is not None else go_on}  # fmt: skip
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{stack.gateway_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        return response.status, response.headers.copy(), await response.read()


async def fill_window_to(stack: Stack, account: dict[str, str], output_tokens: int) -> float:
    """Seed the account's 5-hour window with one heavy call (GLM, 100k in); return the Flows used."""
    seed = usage_event(account["account_id"], model=GLM, input_tokens=100_000, output_tokens=output_tokens)
    assert (await stack.post_usage([seed]))[0] == 202

    async def seeded() -> float:
        used = (await stack.usage(account["key"]))["window_5h"]["used_flows"]
        return float(used) if used > 4 else 0.0

    return float(await eventually(seeded))


class Burst:
    """Workers calling the gateway back to back until stopped: every answer's status, retry-after
    and error code, in the order they came."""

    def __init__(self, stack: Stack, key: str, model: str, workers: int = 4, pause_s: float = 0.05) -> None:
        self.answers: list[tuple[int, str | None, str]] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._work(stack, key, model, pause_s)) for _ in range(workers)]

    async def _work(self, stack: Stack, key: str, model: str, pause_s: float) -> None:
        while not self._stop.is_set():
            status, headers, body = await call(stack, key, model, 1)
            code = json.loads(body)["error"]["code"] if status != 200 else ""
            self.answers.append((status, headers.get("retry-after"), code))
            await asyncio.sleep(pause_s)

    async def stop(self) -> list[tuple[int, str | None, str]]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return self.answers


async def payouts_of(stack: Stack, account_id: str) -> tuple[int, int]:
    """(payout rows in the provider's books, RefundPaidOut events in the stream) for the account."""
    conn = await stack.db()
    try:
        rows = await conn.fetchval("SELECT count(*) FROM refund.payouts WHERE account_id = $1", account_id)
    finally:
        await conn.close()
    nc = await stack.nats()
    try:
        info = await nc.jetstream().stream_info(
            stack.settings.stream, subjects_filter=f"{STORED_PREFIX}.*.account.{account_id}.RefundPaidOut"
        )
        events = sum((info.state.subjects or {}).values())
    finally:
        await nc.close()
    return int(rows), events
