"""The Usage section's per-call detail in a real browser, beyond the latest 1,000 calls: "Older"
until the first call, "Newer" back, and the model filter applied server-side (issue 12 item 3)."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import Page, expect

from tests.e2e.test_console_browser import browser, chromium, console, owner, page  # noqa: F401  (fixtures)
from tests.e2e.test_console_paging import calls, walk
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected
ROWS = "section[aria-label='Usage'] table:not([aria-label]) tbody tr"


async def test_older_and_newer_page_through_1030_calls_and_the_model_filter(console: Stack, page: Page) -> None:  # noqa: F811
    account = await owner(console, page)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    sent = calls(account["account_id"], 1025, start, key_id=account["key_id"])
    sent += [
        usage_event(account["account_id"], key_id=account["key_id"], model="qwen/qwen3-14b",
                    occurred_at=(start + timedelta(seconds=i, milliseconds=300)).isoformat())
        for i in range(5)
    ]  # fmt: skip
    status, body = await console.post_usage(sent)
    assert status == 202, body

    async def all_projected() -> bool:
        return sum(len(p["data"]) for p in await walk(console, account["key"], "limit=1000")) == 1030

    await eventually(all_projected, within=90, interval=1)
    await page.goto(f"{console.console_url}/subscription")
    usage = page.get_by_role("region", name="Usage")
    rows, clicks = await page.locator(ROWS).count(), 0
    while await usage.get_by_role("link", name="Older").count():
        await usage.get_by_role("link", name="Older").click()
        clicks += 1
        await expect(page).to_have_url(re.compile(r"before="))
        await expect(usage.get_by_role("link", name="Newer")).to_be_visible()
        rows += await page.locator(ROWS).count()
    assert (clicks, rows) == (51, 1030)
    assert await page.locator(f"{ROWS} td:nth-child(4)").last.inner_text() == "1 / 500 / 0"  # the first call
    await usage.get_by_role("link", name="Newer").click()
    await expect(page).to_have_url(re.compile(r"after="))
    await expect(page.locator(ROWS)).to_have_count(20)

    await page.goto(f"{console.console_url}/subscription")
    await page.get_by_label("Model", exact=True).select_option("qwen/qwen3-14b")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"model=qwen"))
    await expect(page.locator(ROWS)).to_have_count(5)
    await expect(usage.get_by_role("link", name="Older")).to_have_count(0)
