"""The subscription page of an account with 10,000 calls: rendered server-side quickly, and light
(issue 12: under 100 ms p50 and under 200 KB with its assets), the chart counting every call.
The time is printed and held to the target: the page reads sums from the account API (Flows per
hour, the calls billed to the balance), never the latest thousand calls, so it measured 43 ms p50
at a load average of ~20 on 2 cores (124 ms when it still fetched 1,000 calls for the chart)."""

import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tests.e2e.conftest import new_owner
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected
CALLS = 10_000
BATCH = 5_000


async def test_the_page_with_10000_calls_is_fast_and_light(console: Stack) -> None:
    account, browser = await new_owner(console)
    try:
        start = datetime.now(UTC) - timedelta(hours=4)
        events = [
            usage_event(account["account_id"], key_id=account["key_id"], input_tokens=10, output_tokens=5,
                        occurred_at=(start + timedelta(seconds=i)).isoformat())
            for i in range(CALLS)
        ]  # fmt: skip
        for first in range(0, CALLS, BATCH):
            status, body = await console.post_usage(events[first : first + BATCH])
            assert status == 202, body

        async def projected() -> bool:
            listed, query = 0, "/v1/account/usage/events?limit=1000"
            while True:
                _, body = await console.http("GET", query, token=account["key"])
                listed += len(body["data"])
                if body["next_cursor"] is None:
                    return listed == CALLS
                query = f"/v1/account/usage/events?limit=1000&before={body['next_cursor']}"

        await eventually(projected, within=120, interval=1)
        timings, size = [], 0
        for _ in range(30):
            started = time.perf_counter()
            status, page = await browser.get("/subscription")
            timings.append(time.perf_counter() - started)
            assert status == 200
            size = len(page.encode())
        # The chart counts every one of the 10,000 calls (the API sums them per hour), not only the latest.
        used = Decimal(str((await console.usage(account["key"]))["window_5h"]["used_flows"]))

        async def charted() -> bool:  # billing's hours may lag quota's calls by a moment
            bars = re.findall(r"<title>\d\d:\d\d: ([\d,.]+) Flows</title>", (await browser.get("/subscription"))[1])
            assert len(bars) == 5, bars
            return abs(sum(Decimal(b.replace(",", "")) for b in bars) - used) < Decimal("0.03")  # 5 roundings

        await eventually(charted, within=60, interval=0.5)
        assets = 0
        for name in ("console.css", "console.js"):
            status, text = await browser.get(f"/static/{name}")
            assert status == 200
            assets += len(text.encode())
        p50 = statistics.median(timings) * 1000
        print(f"\n/subscription with {CALLS} calls: p50 {p50:.1f} ms, max {max(timings) * 1000:.1f} ms; "
              f"page {size / 1024:.1f} KB + assets {assets / 1024:.1f} KB")  # fmt: skip
        assert size + assets < 200 * 1024
        assert p50 < 100, f"p50 {p50:.1f} ms"
    finally:
        await browser.close()
