"""The console in a real browser: Debian's headless Chromium driven by Playwright (SPEC §5, issue 12).
Controls are found by their accessible names, the contract the spec names. Each test saves a
screenshot of its final page under .artifacts/screenshots/<run>/."""

import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.stack import ROOT, Stack, eventually, usage_event

pytestmark = pytest.mark.connected
CHROMIUM = Path("/usr/bin/chromium")
CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
SHOTS = ROOT / ".artifacts" / "screenshots" / time.strftime("%Y%m%d-%H%M%S")
PASSWORD = "correct horse battery"
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def console(stack: Stack) -> Stack:
    """The stack, console included (the common fixture starts it)."""
    return stack


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists() or not CJK_FONT.exists():  # a clean machine: the step `make test` runs first
        subprocess.run(["bash", str(ROOT / ".ci" / "install-chromium")], check=True)
    return CHROMIUM


@pytest.fixture(scope="module")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=str(chromium), args=ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    await context.close()


async def serious_violations(page: Page) -> list[str]:
    """axe-core's critical and serious findings on the page as it is now."""
    results = await Axe().run(page)
    return [f"{v['id']} ({v['impact']}): {v['help']}" for v in results.response["violations"]
            if v["impact"] in ("critical", "serious")]  # fmt: skip


async def owner(stack: Stack, page: Page, **extra: Any) -> dict[str, Any]:
    """A new account whose owner opened the one-time link in the browser and chose a password."""
    email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    status, account = await stack.http(
        "POST", "/admin/v1/accounts", token=stack.settings.admin_token, json={"name": "browser", "email": email}
    )
    assert status == 201, account
    await page.goto(account["sign_in_url"])
    await page.get_by_label("New password").fill(PASSWORD)
    await page.get_by_role("button", name="Save").click()
    await expect(page).to_have_url(re.compile(r"/subscription$"))
    return {**account, "email": email}


async def test_the_link_sets_a_password_then_sign_out_and_in_with_it(console: Stack, page: Page) -> None:
    account = await owner(console, page)
    await expect(page.get_by_role("heading", name="5-hour window")).to_be_visible()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/sign-in$"))
    await page.goto(f"{console.console_url}/subscription")
    await expect(page).to_have_url(re.compile(r"/sign-in$"))  # the session ended on the server
    await page.get_by_label("Email").fill(account["email"])
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/subscription$"))
    await expect(page.get_by_text(account["account_id"])).to_be_visible()
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["fp_session"]["httpOnly"] and cookies["fp_session"]["sameSite"] == "Lax"
    await page.goto(account["sign_in_url"])  # used once already
    await expect(page.get_by_role("heading", name="Link no longer valid")).to_be_visible()


async def test_the_windows_move_after_a_metered_call(console: Stack, page: Page) -> None:
    account = await owner(console, page)
    window = page.get_by_role("region", name="5-hour window")
    await expect(window).to_contain_text("0.00 / 5.00 Flows")
    await expect(window).to_contain_text("Not started")
    usage = page.get_by_role("region", name="Usage", exact=True)
    await expect(usage.get_by_role("figure")).to_contain_text("No calls in this period.")
    status, _ = await console.post_usage([usage_event(account["account_id"], key_id=account["key_id"])])
    assert status == 202

    async def moved() -> bool:
        await page.reload()
        return await window.get_by_text("Not started").count() == 0

    await eventually(moved, within=30, interval=0.5)
    used = await page.get_by_test_id("window_5h-used").inner_text()
    assert float(used) > 0
    await expect(page.get_by_role("region", name="This week")).to_contain_text(used)
    await expect(page.get_by_role("region", name="This month")).to_contain_text(used)
    countdown = window.locator("[data-countdown]")
    await expect(countdown).to_have_text(re.compile(r"^4h \d\dm \d\ds$"))
    first = await countdown.inner_text()
    await expect(countdown).not_to_have_text(first)  # it counts down live
    await expect(usage).to_contain_text("deepseek/deepseek-chat")
    await expect(usage).to_contain_text("default")  # the key, by name
    await expect(usage).to_contain_text("subscription")
    # The chart: per hour over 5 hours, per day over a week or a month; the call is in today's bar.
    bars = usage.locator("svg rect.bar-fill")
    await expect(bars).to_have_count(5)
    await usage.get_by_role("link", name="Per day (month view)").click()
    await expect(page).to_have_url(re.compile(r"chart=month"))
    await expect(bars).to_have_count(30)

    async def charted() -> bool:  # billing sums the hours a moment after quota lists the call
        await page.reload()
        return await bars.last.get_attribute("height") == "120"

    await eventually(charted, within=30, interval=0.5)
    assert await bars.first.get_attribute("height") == "0"
    await expect(usage.get_by_text("No calls in this period.")).to_have_count(0)
    await usage.get_by_role("link", name="Per day (week view)").click()
    await expect(bars).to_have_count(7)


async def test_a_payg_key_is_created_its_secret_shown_once_and_copied(console: Stack, page: Page) -> None:
    await owner(console, page)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=console.console_url)
    await page.get_by_role("button", name="Create key").click()
    dialog = page.get_by_role("dialog", name="Create key")
    await dialog.get_by_label("Name").fill("ci runner")
    await dialog.get_by_role("radio", name="Pay As You Go").check()
    await dialog.get_by_role("button", name="Create", exact=True).click()
    shown = page.get_by_role("dialog", name="Your new key")
    secret = (await shown.locator("code").inner_text()).strip()
    assert secret.startswith("sk-pg-v1-")
    await shown.get_by_role("button", name="Copy").click()
    await expect(shown.get_by_role("button", name="Copied")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    await shown.get_by_role("button", name="Done").click()
    await page.goto(f"{console.console_url}/subscription")
    keys = page.get_by_role("region", name="API keys")
    row = keys.get_by_role("row").filter(has_text="ci runner")
    await expect(row).to_contain_text("Pay As You Go")
    await expect(row).to_contain_text(secret[-4:])
    assert secret not in await page.content()  # shown once, never again


async def test_extra_usage_turns_on_through_select_a_key(console: Stack, page: Page) -> None:
    account = await owner(console, page)
    status, payg = await console.http(
        "POST", "/v1/keys", token=account["management_key"], json={"name": "overflow", "kind": "payg"}
    )
    assert status == 201, payg
    await page.reload()
    switch = page.get_by_role("switch", name="Extra Usage")
    await expect(switch).to_have_attribute("aria-checked", "false")
    await switch.click()
    dialog = page.get_by_role("dialog", name="Select a Key")
    await expect(dialog.get_by_role("button", name="Create new key")).to_be_visible()
    await dialog.get_by_role("radio", name=re.compile("overflow")).check()
    await dialog.get_by_role("button", name="Select", exact=True).click()
    await expect(page.get_by_role("switch", name="Extra Usage")).to_have_attribute("aria-checked", "true")
    details = page.get_by_test_id("extra-usage-key")
    await expect(details).to_contain_text("overflow")
    await expect(details).to_contain_text(payg["last4"])
    await expect(details).to_contain_text("active")
    section = page.get_by_role("region", name="Extra Usage")
    await expect(section.get_by_role("button", name="Reselect")).to_be_visible()
    await expect(section.get_by_role("button", name="Top up")).to_be_visible()
    usage = await console.usage(account["key"])
    assert usage["extra_usage"] == {**usage["extra_usage"], "enabled": True, "payg_key_id": payg["id"]}


async def test_a_refund_shows_its_preview_then_succeeds_and_the_plan_is_free(console: Stack, page: Page) -> None:
    account = await owner(console, page)
    await console.pay(account["account_id"], "pro", "20.00")
    await page.reload()
    await expect(page.get_by_test_id("current-plan")).to_have_text("Pro")
    refund = page.get_by_role("region", name="Refund")
    await refund.get_by_role("button", name="Request refund").click()
    preview = page.get_by_role("table", name="Refund preview")
    await expect(preview).to_contain_text("$20.00")
    await expect(preview.get_by_role("row", name=re.compile("Processor fee"))).to_contain_text("$1.00")
    await expect(page.get_by_test_id("refund-amount")).to_have_text("$19.00")
    await refund.get_by_role("button", name="Confirm refund").click()
    await expect(page.get_by_test_id("refund-status")).to_contain_text(
        re.compile("processing|succeeded"), timeout=WAIT_MS
    )
    await expect(page.get_by_test_id("refund-status")).to_contain_text("succeeded", timeout=60_000)
    await expect(page.get_by_test_id("current-plan")).to_have_text("Free")


async def test_every_page_passes_axe_without_critical_or_serious_violations(console: Stack, page: Page) -> None:
    """axe-core (4.12, from the axe-playwright-python package on PyPI) run in the browser on each page,
    with the dialogs open too, and in Chinese. (The sign-up mail's pages are checked in the sign-up
    test, a conversation in the Studio Chat test.)"""
    found: dict[str, list[str]] = {}

    async def check(name: str) -> None:
        found[name] = await serious_violations(page)

    await page.goto(f"{console.console_url}/sign-in")
    await check("sign-in")
    await page.goto(f"{console.console_url}/pricing")
    await check("pricing")
    await page.goto(f"{console.console_url}/sign-up")
    await check("sign-up")
    await page.get_by_label("Email").fill("not-an-address@")
    await page.get_by_label("Password").fill("short")
    await page.evaluate("document.querySelector('form[action=\"/sign-up\"]').noValidate = true")
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("alert")).to_be_visible()  # the server's answer, naming what is wrong
    await check("sign-up refused")
    status, account = await console.http(
        "POST", "/admin/v1/accounts", token=console.settings.admin_token, json={"name": "axe"}
    )
    assert status == 201
    await page.goto(account["sign_in_url"])
    await check("set-password")
    await page.get_by_label("Email").fill(f"axe-{uuid.uuid4().hex[:8]}@example.com")
    await page.get_by_label("New password").fill(PASSWORD)
    await page.get_by_role("button", name="Save").click()
    await console.pay(account["account_id"], "pro", "20.00")
    await page.goto(f"{console.console_url}/subscription?refund=preview")
    await check("subscription")
    await page.get_by_role("button", name="Create key").click()
    await check("create-key dialog")
    await page.keyboard.press("Escape")
    await page.get_by_role("switch", name="Extra Usage").click()
    await check("select-a-key dialog")
    await page.goto(f"{console.console_url}/chat")
    await check("chat")
    await page.goto(f"{console.console_url}/subscription")
    await page.get_by_role("button", name="中文").click()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    await check("subscription in Chinese")
    await page.goto(f"{console.console_url}/pricing")
    await check("pricing in Chinese")
    await page.goto(account["sign_in_url"])
    await check("used link")
    assert len(found) == 12 and not any(found.values()), found


async def test_chinese_from_accept_language_and_the_switch_that_sticks(
    console: Stack, browser: Browser, page: Page
) -> None:
    await owner(console, page)
    await page.get_by_role("button", name="中文").click()
    await expect(page.get_by_role("heading", name="5 小时窗口")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-Hans")
    # The controls keep their English accessible names; what is shown is Chinese.
    await expect(page.get_by_role("button", name="Create key")).to_have_text("创建密钥")
    await expect(page.get_by_role("switch", name="Extra Usage")).to_be_visible()
    await page.reload()  # it sticks
    await expect(page.get_by_role("heading", name="本月")).to_be_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "chinese-subscription.png"), full_page=True)
    await page.get_by_role("button", name="English").click()
    await expect(page.get_by_role("heading", name="5-hour window")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    chinese = await browser.new_context(locale="zh-CN", extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    visitor = await chinese.new_page()
    await visitor.goto(f"{console.console_url}/sign-in")
    await expect(visitor.get_by_role("heading", name="登录")).to_be_visible()
    await expect(visitor.get_by_role("button", name="Sign in")).to_have_text("登录")
    await chinese.close()


async def test_times_are_the_owners_time_zone_and_numbers_and_money_are_written_for_the_language(
    console: Stack, browser: Browser
) -> None:
    """A browser in Shanghai (UTC+8): the server writes the times, and the chart's hours, in the zone
    the browser told it (the fp_tz cookie), in the page as served, not only after a script ran.
    Flows and money are grouped and the dollar written as each language writes them."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="Asia/Shanghai")
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    try:
        account = await owner(console, page)
        assert {c["name"]: c["value"] for c in await context.cookies()}["fp_tz"] == "Asia%2FShanghai"
        status, _ = await console.post_usage([usage_event(account["account_id"], key_id=account["key_id"],
                                                          input_tokens=12_345, output_tokens=6_789)])  # fmt: skip
        assert status == 202
        usage = page.get_by_role("region", name="Usage", exact=True)

        async def shown() -> bool:
            await page.reload()
            return await usage.get_by_text("12,345 / 6,789 / 0").count() == 1

        await eventually(shown, within=30, interval=0.5)
        status, keys = await console.http("GET", "/v1/keys", token=account["key"])
        [default] = [k for k in keys["data"] if k["name"] == "default"]
        created = datetime.fromisoformat(default["created_at"].replace("Z", "+00:00"))
        local = created.astimezone(ZoneInfo("Asia/Shanghai"))
        written = f"{local:%b} {local.day}, {local.year}, {local.hour % 12 or 12}:{local:%M} {local:%p}"
        served = await (await context.request.get(f"{console.console_url}/subscription")).text()
        assert written in served  # the server's own text: Shanghai's clock, not UTC's
        row = page.get_by_role("region", name="API keys").get_by_role("row").filter(has_text="default")
        await expect(row).to_contain_text(written)
        now = datetime.now(ZoneInfo("Asia/Shanghai"))
        await expect(usage.locator("svg text").last).to_have_text(f"{now:%H}:00")  # the chart's hours are hers
        plan = page.get_by_role("region", name="Plan")
        await expect(plan).to_contain_text("Pro: $20.00/month, 50 Flows per 5 hours, 2,160 Flows per month")
        await expect(plan).to_contain_text("34,560 Flows per month")
        await page.get_by_role("button", name="中文").click()
        await expect(plan).to_contain_text("Pro: US$20.00/月, 50 Flows / 5 小时, 2,160 Flows / 月")
        await expect(row).to_contain_text(f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}")
        countdown = page.get_by_role("region", name="5-hour window").locator("[data-countdown]")
        await expect(countdown).to_have_text(re.compile(r"^4小时 \d\d分 \d\d秒$"))
        await page.goto(f"{console.console_url}/pricing")
        await expect(page.get_by_role("region", name="Max", exact=True)).to_contain_text("US$327.27")
        await expect(page.get_by_role("region", name="Max", exact=True)).to_contain_text("12,960 Flows")
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.goto(f"{console.console_url}/subscription")
        await page.screenshot(path=str(SHOTS / "shanghai-chinese-subscription.png"), full_page=True)
        await context.close()


async def test_upgrade_from_pro_to_max_through_the_providers_pay_button(console: Stack, page: Page) -> None:
    account = await owner(console, page)
    await console.pay(account["account_id"], "pro", "20.00")
    await page.reload()
    await expect(page.get_by_test_id("current-plan")).to_have_text("Pro")
    await expect(page.get_by_role("button", name="Downgrade to Pro")).to_have_count(0)
    await page.get_by_role("region", name="Plan").get_by_role("button", name="Upgrade to Max").click()
    await expect(page).to_have_url(re.compile(r"/provider/checkout/cs_"))
    await expect(page.get_by_text("Max plan, one month")).to_be_visible()
    await expect(page.get_by_text("$100.00")).to_be_visible()
    assert await serious_violations(page) == []  # the local provider's page, on the owner's way
    await page.get_by_role("button", name="Pay").click()
    await expect(page).to_have_url(re.compile(r"/subscription\?checkout=paid$"))
    await expect(page.get_by_role("status").filter(has_text="Payment received.")).to_be_visible()
    await expect(page.get_by_test_id("current-plan")).to_have_text("Max")
    await expect(page.get_by_role("button", name="Downgrade to Pro")).to_be_visible()
    history = page.get_by_role("region", name="Billing history")
    await expect(history).to_contain_text("$100.00")
    await expect(history.get_by_role("row").filter(has_text="Plan change").first).to_contain_text("Pro → Max")
    await expect(history.get_by_role("row").filter(has_text="$100.00")).to_contain_text("Payment")


async def test_pricing_shows_the_plans_at_the_rate_in_force_and_get_max_leads_to_checkout(
    console: Stack, page: Page
) -> None:
    await page.goto(f"{console.console_url}/pricing")
    pro = page.get_by_role("region", name="Pro", exact=True)
    await expect(pro).to_contain_text("$20.00")
    await expect(pro).to_contain_text("2,160 Flows")
    await expect(pro).to_contain_text("$54.55")
    await expect(pro).to_contain_text("2.73×")
    plans = {p["id"]: p for p in (await console.http("GET", "/v1/plans"))[1]["plans"]}
    for plan in ("free", "pro", "max"):  # the model count per plan, as GET /v1/plans lists them
        region = page.get_by_role("region", name=plans[plan]["name"], exact=True)
        await expect(region.get_by_text("Models")).to_be_visible()
        await expect(region).to_contain_text(f"Models{len(plans[plan]['models'])}")
    for plan, value, leverage in (("Max", "$327.27", "3.27×"), ("Ultra", "$872.73", "4.36×")):
        region = page.get_by_role("region", name=plan, exact=True)
        await expect(region).to_contain_text(value)
        await expect(region).to_contain_text(leverage)
    await expect(page.get_by_role("img", name=re.compile("Plans compared"))).to_be_visible()
    for name in ("Get Pro", "Get Max", "Get Ultra"):
        await expect(page.get_by_role("button", name=name)).to_be_visible()
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "pricing.png"), full_page=True)
    await page.get_by_role("button", name="Get Max").click()
    await expect(page).to_have_url(re.compile(r"/sign-up$"))  # not signed in yet: an account first
    await owner(console, page)
    await page.goto(f"{console.console_url}/pricing")
    await page.get_by_role("button", name="Get Max").click()
    await expect(page).to_have_url(re.compile(r"/provider/checkout/cs_"))
    await expect(page.get_by_text("$100.00")).to_be_visible()
    await page.get_by_role("button", name="Cancel").click()
    await expect(page).to_have_url(re.compile(r"/subscription\?checkout=cancelled$"))
    await expect(page.get_by_test_id("current-plan")).to_have_text("Free")


async def mailed_to(console: Stack, email: str) -> list[dict[str, str]]:
    async with aiohttp.ClientSession() as session:
        mailbox = f"http://127.0.0.1:{console.settings.simulator_port}/mailbox"
        async with session.get(mailbox, headers={"Accept": "application/json"}) as response:
            return [m for m in (await response.json())["messages"] if m["to"] == email]


async def test_sign_up_by_the_mailed_link_shows_the_first_key_once_and_pays_for_max(console: Stack, page: Page) -> None:
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    await page.goto(f"{console.console_url}/pricing")
    await page.get_by_role("button", name="Get Max").click()
    await expect(page).to_have_url(re.compile(r"/sign-up$"))
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    found = {"check your email": await serious_violations(page)}
    [mail] = await mailed_to(console, email)
    await page.goto(f"http://127.0.0.1:{console.settings.simulator_port}/mailbox")
    await expect(page.get_by_text(mail["subject"]).first).to_be_visible()
    found["mailbox"] = await serious_violations(page)
    link = re.search(r"http\S+/sign-up/finish/\S+", mail["text"])
    assert link and mail["subject"] == "Finish creating your flowplan account"
    await page.goto(link.group(0))
    found["finish sign-up"] = await serious_violations(page)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Your account is ready")).to_be_visible()
    found["welcome"] = await serious_violations(page)
    assert not any(found.values()), found
    key = (await page.locator("#new-secret").inner_text()).strip()
    assert key.startswith("sk-ss-v1-")
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "sign-up-key.png"), full_page=True)
    await page.get_by_role("link", name="Go to your subscription").click()
    await expect(page.get_by_test_id("current-plan")).to_have_text("Free")
    assert key not in await page.content()
    status, usage = await console.http("GET", "/v1/account/usage", token=key)
    assert status == 200 and usage["plan"] == "free"
    plan = page.get_by_role("region", name="Plan")
    await plan.get_by_role("button", name="Upgrade to Max").click()  # the link confirmed the email
    await expect(page).to_have_url(re.compile(r"/provider/checkout/cs_"))
    await page.get_by_role("button", name="Pay").click()
    await expect(page.get_by_test_id("current-plan")).to_have_text("Max")
    await page.screenshot(path=str(SHOTS / "sign-up-max.png"), full_page=True)
    # The same email again: the same answer as a new one; only the mail says an account exists.
    await page.goto(f"{console.console_url}/sign-up")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Create account").click()
    await expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    assert sorted(m["subject"] for m in await mailed_to(console, email)) == [
        "Finish creating your flowplan account", "Your flowplan account"
    ]  # fmt: skip


async def test_studio_chat_bills_each_conversation_as_its_mode_says_and_a_switch_applies_to_the_next_message(
    console: Stack, page: Page
) -> None:
    """A Subscription conversation consumes Flows and no balance, a Pay As You Go one debits the
    balance and consumes no Flows, and switching a conversation's mode applies to its next message."""
    account = await owner(console, page)
    status, _ = await console.http(
        "POST", f"/admin/v1/accounts/{account['account_id']}/balance", token=console.settings.admin_token,
        json={"amount_usd": "1.00"},
    )  # fmt: skip
    assert status == 201
    messages = page.get_by_role("log", name="Messages")

    async def spent() -> tuple[float, str]:
        usage = await console.usage(account["key"])
        return usage["window_5h"]["used_flows"], usage["extra_usage"]["balance_usd"]

    async def send(text: str) -> None:
        count = await messages.get_by_role("article", name="Assistant").count()
        await page.get_by_label("Message", exact=True).fill(text)
        await page.get_by_role("button", name="Send").click()
        replies = messages.get_by_role("article", name="Assistant")
        await expect(replies).to_have_count(count + 1)
        await expect(page.locator("article[aria-busy]")).to_have_count(0)  # the stream has ended
        await expect(replies.last).to_have_text(re.compile(r"\S"))

    async def changed(before: tuple[float, str]) -> tuple[float, str]:
        async def moved() -> tuple[float, str] | None:
            now = await spent()
            return now if now != before else None

        return await eventually(moved, within=30, interval=0.2)

    await page.get_by_role("link", name="Studio Chat").click()
    await page.get_by_role("button", name="New chat").click()
    await expect(page).to_have_url(re.compile(r"/chat/conv_"))
    subscription_chat = page.url
    mode = page.get_by_role("radiogroup", name="Billing mode")
    await expect(mode.get_by_role("radio", name="Subscription")).to_be_checked()
    model = page.get_by_label("Model")
    # Subscription offers the Free plan's models only; Pay As You Go offers every model.
    await expect(model.locator("option[value='google/gemini-2.5-flash-lite']")).to_be_disabled()
    await model.select_option("deepseek/deepseek-chat")
    before = await spent()
    await send("Hello from a subscription chat")
    flows, balance = await changed(before)
    assert flows > before[0] and balance == before[1] == "1.000000"
    await expect(page.get_by_test_id("chat-cost-flows")).not_to_have_text("0.00")
    await expect(page.get_by_test_id("chat-cost-usd")).to_have_text("$0.00")

    await page.get_by_role("button", name="New chat").click()
    await expect(page).not_to_have_url(subscription_chat)
    await mode.get_by_role("radio", name="Pay As You Go").check()
    await expect(model.locator("option[value='google/gemini-2.5-flash-lite']")).to_be_enabled()
    await model.select_option("google/gemini-2.5-flash-lite")
    before = await spent()
    await send("Hello from a pay-as-you-go chat")
    flows, balance = await changed(before)
    assert flows == before[0] and balance < before[1]
    await expect(page.get_by_test_id("chat-cost-usd")).not_to_have_text("$0.00")
    await expect(page.get_by_test_id("chat-cost-flows")).to_have_text("0.00")

    # The same conversation switched to Subscription: its next message is billed to the plan.
    await mode.get_by_role("radio", name="Subscription").check()
    await model.select_option("deepseek/deepseek-chat")
    before = await spent()
    await send("Now on the subscription, please")
    flows, balance = await changed(before)
    assert flows > before[0] and balance == before[1]
    await expect(page.get_by_test_id("chat-cost-flows")).not_to_have_text("0.00")
    await page.reload()  # the mode the conversation keeps, and its messages, come back from the server
    await expect(mode.get_by_role("radio", name="Subscription")).to_be_checked()
    await expect(messages.get_by_role("article", name="You")).to_have_count(2)

    results = await Axe().run(page)
    serious = [v["id"] for v in results.response["violations"] if v["impact"] in ("critical", "serious")]
    assert serious == []
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / "studio-chat.png"), full_page=True)  # the chat itself, to look at
    # The subscription page's usage detail says which conversation each call came from.
    await page.get_by_role("link", name="Subscription", exact=True).click()
    usage = page.get_by_role("region", name="Usage", exact=True)
    await expect(usage.get_by_role("link", name="Hello from a subscription chat")).to_have_count(1)
    await expect(usage.get_by_role("link", name="Hello from a pay-as-you-go chat")).to_have_count(2)


async def test_a_control_character_in_the_address_shows_the_not_allowed_page(console: Stack, page: Page) -> None:
    await owner(console, page)
    response = await page.goto(f"{console.console_url}/chat/%00")
    assert response is not None and response.status == 400
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    await expect(page.get_by_role("alert")).to_contain_text("control characters")
    await expect(page.get_by_role("link", name="Sign in")).to_have_attribute("href", "/sign-in")  # it leads on
