"""The per-call detail paged by cursor and filtered by key and model, server-side (issue 12 item 3):
`GET /v1/account/usage/events?limit=&before=|after=&key_id=&model=` with `next_cursor` /
`prev_cursor`, quota's keyset query behind it, and the console's "Older" / "Newer" links beyond the
latest 1,000 calls."""

import base64
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import new_owner
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected
EVENTS = "/v1/account/usage/events"
_TOKENS = re.compile(r"<td>([\d,]+) / [\d,]+ / [\d,]+</td>")  # grouped: 1,030
_LINK = re.compile(r'<a href="(/subscription\?[^"#]*)#usage" rel="(next|prev)">')


def calls(account_id: str, count: int, start: datetime, **fields: Any) -> list[dict[str, Any]]:
    """`count` calls a second apart, oldest first, told apart by their input tokens (i + 1); every
    fifth shares its time with the one before, so within a second the event id orders them (the
    keyset's second column)."""
    return [
        usage_event(account_id, event_id=f"c{i:04d}", input_tokens=i + 1,
                    occurred_at=(start + timedelta(seconds=i - i % 5 // 4)).isoformat(), **fields)
        for i in range(count)
    ]  # fmt: skip


async def listed(stack: Stack, key: str, query: str) -> dict[str, Any]:
    status, body = await stack.http("GET", f"{EVENTS}?{query}", token=key)
    assert status == 200, body
    return dict(body)


async def walk(stack: Stack, key: str, query: str, cursor: str = "next_cursor") -> list[dict[str, Any]]:
    """Every page from the one `query` names, following `cursor` until it is null."""
    direction = {"next_cursor": "before", "prev_cursor": "after"}[cursor]
    pages = [await listed(stack, key, query)]
    while pages[-1][cursor] is not None:
        pages.append(await listed(stack, key, f"{query.split('&before=')[0]}&{direction}={quote(pages[-1][cursor])}"))
    return pages


def ids(*pages: dict[str, Any]) -> list[str]:
    return [e["event_id"] for page in pages for e in page["data"]]


async def test_250_calls_in_pages_of_100_each_exactly_once_in_order_both_ways(stack: Stack) -> None:
    account = await stack.create_account("paging")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    status, body = await stack.post_usage(calls(account["account_id"], 250, start, key_id=account["key_id"]))
    assert status == 202, body

    async def all_projected() -> bool:
        return len((await listed(stack, account["key"], "limit=1000"))["data"]) == 250

    await eventually(all_projected, within=60, interval=0.5)
    newest_first = [f"c{i:04d}" for i in reversed(range(250))]
    assert ids(await listed(stack, account["key"], "limit=1000")) == newest_first

    pages = await walk(stack, account["key"], "limit=100")
    assert [len(p["data"]) for p in pages] == [100, 100, 50]
    assert ids(*pages) == newest_first
    assert pages[0]["prev_cursor"] is None and pages[-1]["next_cursor"] is None
    assert all(p["prev_cursor"] is not None for p in pages[1:])

    # Back from the oldest page with prev_cursor (after=): the same pages, newest first within each.
    oldest_query = f"limit=100&before={quote(pages[1]['next_cursor'])}"
    back = await walk(stack, account["key"], oldest_query, "prev_cursor")
    assert [ids(p) for p in back] == [ids(p) for p in reversed(pages)]
    assert back[0]["next_cursor"] is None and all(p["next_cursor"] is not None for p in back[1:])
    assert back[-1]["prev_cursor"] is None


async def test_filters_by_key_and_model_page_server_side(stack: Stack) -> None:
    account = await stack.create_account("filters")
    status, second = await stack.http(
        "POST", "/v1/keys", token=account["management_key"], json={"name": "second", "kind": "subscription"}
    )
    assert status == 201, second
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    mine = calls(account["account_id"], 30, start, key_id=account["key_id"])
    theirs = [
        usage_event(account["account_id"], key_id=second["id"], model="qwen/qwen3-14b",
                    occurred_at=(start + timedelta(seconds=i, milliseconds=500)).isoformat())
        for i in range(25)
    ]  # fmt: skip
    status, body = await stack.post_usage(mine + theirs)
    assert status == 202, body

    async def all_projected() -> bool:
        return len((await listed(stack, account["key"], "limit=1000"))["data"]) == 55

    await eventually(all_projected, within=60, interval=0.5)
    by_key = await walk(stack, account["key"], f"limit=10&key_id={second['id']}")
    assert [len(p["data"]) for p in by_key] == [10, 10, 5]
    assert ids(*by_key) == [e["event_id"] for e in reversed(theirs)]
    by_model = await walk(stack, account["key"], "limit=7&model=deepseek/deepseek-chat")
    assert ids(*by_model) == [f"c{i:04d}" for i in reversed(range(30))]
    both = await listed(stack, account["key"], f"limit=100&key_id={account['key_id']}&model=qwen/qwen3-14b")
    assert both["data"] == [] and both["next_cursor"] is None and both["prev_cursor"] is None
    every = await listed(stack, account["key"], "limit=100&key_id=&model=")  # empty: no filter
    assert len(every["data"]) == 55


async def test_calls_by_billing_mode_and_the_subscriptions_flows_per_hour(stack: Stack) -> None:
    """What the console's page reads besides a page of calls: the latest calls billed to the balance
    (what Extra Usage spent) and the subscription's Flows per UTC hour (its chart), summed by the
    API however many calls there are."""
    account = await stack.create_account("modes")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    on_plan = [usage_event(account["account_id"], occurred_at=(hour + timedelta(minutes=i)).isoformat())
               for i in range(12)]  # fmt: skip
    later = [usage_event(account["account_id"], occurred_at=(hour + timedelta(hours=1, minutes=1)).isoformat())]
    balance = [usage_event(account["account_id"], billing_mode="payg",
                           occurred_at=(hour + timedelta(minutes=30 + i)).isoformat()) for i in range(3)]  # fmt: skip
    status, body = await stack.post_usage(on_plan + later + balance)
    assert status == 202, body

    async def all_projected() -> bool:
        return len((await listed(stack, account["key"], "limit=100"))["data"]) == 16

    await eventually(all_projected, within=60, interval=0.5)
    payg = await listed(stack, account["key"], "limit=100&billing_mode=payg")
    assert sorted(e["event_id"] for e in payg["data"]) == sorted(e["event_id"] for e in balance)
    plan = await listed(stack, account["key"], "limit=100&billing_mode=subscription")
    assert len(plan["data"]) == 13 and {e["billing_mode"] for e in plan["data"]} == {"subscription"}

    async def hours() -> dict[str, Any]:
        status, body = await stack.http("GET", "/v1/account/costs?group_by=hour", token=account["key"])
        assert status == 200, body
        return dict(body) if body["total"]["calls"] == 13 else {}

    by_hour = await eventually(hours, within=30, interval=0.5)
    flows = {e["event_id"]: e["flows"] for e in plan["data"]}
    first = f"{hour:%Y-%m-%dT%H}:00:00Z"
    second = f"{hour + timedelta(hours=1):%Y-%m-%dT%H}:00:00Z"
    assert [(line["hour"], line["calls"]) for line in by_hour["data"]] == [(first, 12), (second, 1)]
    assert by_hour["data"][0]["flows"] == pytest.approx(sum(flows[e["event_id"]] for e in on_plan))
    assert "usd" not in by_hour["data"][0]  # the hours keep Flows only
    for query, field in (("billing_mode=both", "billing_mode"),):
        status, error = await stack.http("GET", f"{EVENTS}?{query}", token=account["key"])
        assert status == 400 and error["error"]["field"] == field, error
    status, error = await stack.http("GET", "/v1/account/costs?group_by=minute", token=account["key"])
    assert status == 400 and error["error"]["field"] == "group_by", error


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("before=not-a-cursor!", "before"),
        ("before=", "before"),
        ("after=" + base64.urlsafe_b64encode(b'{"a": 1}').decode(), "after"),
        ("before=" + base64.urlsafe_b64encode(b'[99999999999999999999, "x"]').decode(), "before"),
        ("before=" + base64.urlsafe_b64encode(b'[0, "x\\u0000y"]').decode(), "before"),
        ("before=" + base64.urlsafe_b64encode(b'[-1, "x"]').decode(), "before"),
        ("before=" + "A" * 2000, "before"),
        ("before=WzAsIngiXQ&after=WzAsIngiXQ", "after"),
        ("key_id=" + "k" * 129, "key_id"),
        ("model=%00", "model"),
        ("limit=0", "limit"),
    ],
)
async def test_a_bad_cursor_or_filter_is_a_400_naming_it(stack: Stack, query: str, field: str) -> None:
    account = await stack.create_account("bad-cursor")
    status, body = await stack.http("GET", f"{EVENTS}?{query}", token=account["key"])
    assert status == 400, body
    assert body["error"]["field"] == field and body["error"]["code"] == "invalid_request"


async def test_the_console_pages_beyond_the_latest_1000_calls(stack: Stack) -> None:
    account, browser = await new_owner(stack)
    try:
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
        status, body = await stack.post_usage(calls(account["account_id"], 1030, start, key_id=account["key_id"]))
        assert status == 202, body

        async def all_projected() -> bool:
            return sum(len(p["data"]) for p in await walk(stack, account["key"], "limit=1000")) == 1030

        await eventually(all_projected, within=90, interval=1)
        seen: list[int] = []
        path, pages = "/subscription", []
        while True:
            status, page = await browser.get(path)
            assert status == 200
            pages.append(page)
            seen += [int(tokens.replace(",", "")) for tokens in _TOKENS.findall(page)]
            links = {rel: href.replace("&amp;", "&") for href, rel in _LINK.findall(page)}
            assert ("prev" in links) == (len(pages) > 1)
            if "next" not in links:
                break
            path = links["next"]
        assert len(pages) == 52 and seen == [i + 1 for i in reversed(range(1030))]
        # "Newer" from the oldest page shows the page before it again.
        newer = {rel: href.replace("&amp;", "&") for href, rel in _LINK.findall(pages[-1])}["prev"]
        status, page = await browser.get(newer)
        assert status == 200 and [int(t.replace(",", "")) for t in _TOKENS.findall(page)] == seen[-30:-10]
        # A cursor edited in the address bar: the account API's 400, shown as such.
        status, _ = await browser.get("/subscription?before=garbage")
        assert status == 400
    finally:
        await browser.close()
