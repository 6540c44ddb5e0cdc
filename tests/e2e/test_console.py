"""The console over plain HTTP, against the whole stack (SPEC §5, issue 12): the admin API's
one-time links, setting a password, signing in and out, sessions, CSRF, the wrong-password lockout,
the owner pass ingress accepts from the console, and that one owner sees nothing of another account."""

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from yarl import URL

from libs import chatpass, ownerpass
from tests.e2e.conftest import PASSWORD, Browser, link_path, new_owner, token
from tests.stack import Stack, eventually, usage_event

pytestmark = pytest.mark.connected


async def test_create_account_gives_a_one_time_link_that_sets_a_password_and_signs_in(console: Stack) -> None:
    email = f"Ann-{uuid.uuid4().hex[:6]}@Example.com"
    status, account = await console.http(
        "POST", "/admin/v1/accounts", token=console.settings.admin_token, json={"name": "ann", "email": email}
    )
    assert status == 201 and account["email"] == email.lower()
    assert account["sign_in_url"].startswith(console.console_url + "/sign-in/link/")
    browser = Browser(console)
    try:
        path = link_path(account["sign_in_url"])
        status, page = await browser.get(path)
        assert status == 200 and "New password" in page and ">Save<" in page
        too_short = await browser.post(path, {"password": "short"})
        assert too_short.status == 400  # the link is not used up by a refused password
        response = await browser.post(path, {"password": PASSWORD})
        assert response.status == 303 and response.headers["Location"] == "/subscription"
        cookie = response.headers["Set-Cookie"]
        assert "fp_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
        assert "Secure" not in cookie  # plain http here; over https the cookie is Secure
        status, page = await browser.get("/subscription")
        assert status == 200 and account["account_id"] in page and "5-hour window" in page
        # The link works once: looking at it or posting to it again finds it used.
        assert (await browser.get(path))[0] == 410
        again = await (stranger := Browser(console)).post(
            path, {"password": "another password 1"}, csrf_from="/sign-in"
        )
        assert again.status == 410
        await stranger.close()
    finally:
        await browser.close()


async def test_sign_out_ends_the_session_on_the_server_and_the_password_signs_in_again(console: Stack) -> None:
    account, browser = await new_owner(console)
    stolen = browser.session.cookie_jar.filter_cookies(URL(console.console_url))["fp_session"].value
    try:
        response = await browser.post("/sign-out", {}, csrf_from="/subscription")
        assert response.status == 303 and response.headers["Location"] == "/sign-in"
        # A copy of the old cookie is worth nothing now.
        replay = Browser(console)
        replay.session.cookie_jar.update_cookies({"fp_session": stolen})
        status, page = await replay.get("/subscription")
        assert status == 200 and "Sign in" in page and account["account_id"] not in page
        await replay.close()
        wrong = await browser.post("/sign-in", {"email": account["email"], "password": "not the password"})
        assert wrong.status == 401
        right = await browser.post("/sign-in", {"email": account["email"].upper(), "password": PASSWORD})
        assert right.status == 303 and right.headers["Location"] == "/subscription"
        assert account["account_id"] in (await browser.get("/subscription"))[1]
    finally:
        await browser.close()


async def test_a_post_without_the_csrf_token_is_refused(console: Stack) -> None:
    account, browser = await new_owner(console)
    try:
        for path, form in [("/keys", {"name": "x", "kind": "payg"}), ("/sign-out", {}), ("/refunds", {})]:
            for csrf in (None, "0" * 64):
                sent = form if csrf is None else {**form, "csrf": csrf}
                response = await browser.session.post(console.console_url + path, data=sent, allow_redirects=False)
                assert response.status == 403, path
        _, keys = await console.http("GET", "/v1/keys", token=account["key"])
        assert [k["name"] for k in keys["data"]] == ["default", "management"]
        assert (await browser.get("/subscription"))[0] == 200  # still signed in: the sign-out was refused
        # Another visitor's token does not fit this session either.
        stranger = Browser(console)
        _, page = await stranger.get("/sign-in")
        response = await browser.post("/keys", {"name": "x", "kind": "payg", "csrf": token(page)})
        assert response.status == 403
        await stranger.close()
    finally:
        await browser.close()


async def test_wrong_passwords_are_slowed_then_locked_per_email(console: Stack) -> None:
    account, browser = await new_owner(console)
    await browser.close()
    visitor = Browser(console)
    try:
        for _ in range(5):
            assert (
                await visitor.post("/sign-in", {"email": account["email"], "password": "guess-guess"})
            ).status == 401
        locked = await visitor.post("/sign-in", {"email": account["email"], "password": PASSWORD})
        assert locked.status == 429  # even the right password, while locked
        other, other_browser = await new_owner(console)
        await other_browser.close()
        fine = await Browser(console).post("/sign-in", {"email": other["email"], "password": PASSWORD})
        assert fine.status == 303  # another email from the same address is not locked (yet)
    finally:
        await visitor.close()


async def test_admin_sign_in_link_is_fresh_and_checks_its_input(console: Stack) -> None:
    account, browser = await new_owner(console)
    await browser.close()
    admin = console.settings.admin_token
    status, link = await console.http("POST", f"/admin/v1/accounts/{account['account_id']}/sign-in-link", token=admin)
    assert status == 201 and link["email"] == account["email"] and link["sign_in_url"] != account["sign_in_url"]
    assert datetime.fromisoformat(link["expires_at"].replace("Z", "+00:00")) > datetime.now(UTC)
    fresh = Browser(console)
    assert (await fresh.post(link_path(link["sign_in_url"]), {"password": "a new password!"})).status == 303
    await fresh.close()
    other, other_browser = await new_owner(console)
    await other_browser.close()
    path = f"/admin/v1/accounts/{account['account_id']}/sign-in-link"
    status, body = await console.http("POST", path, token=admin, json={"email": other["email"]})
    assert status == 409 and body["error"]["code"] == "email_taken" and body["error"]["field"] == "email"
    status, body = await console.http("POST", path, token=admin, json={"email": "not-an-email"})
    assert status == 400 and body["error"]["field"] == "email"
    status, body = await console.http("POST", "/admin/v1/accounts/acc_nobody/sign-in-link", token=admin)
    assert status == 404
    status, body = await console.http(
        "POST", "/admin/v1/accounts", token=admin, json={"name": "dup", "email": other["email"]}
    )
    assert status == 409 and body["error"]["code"] == "email_taken"


async def test_ingress_takes_the_console_pass_for_its_account_only_and_not_forged(console: Stack) -> None:
    account, browser = await new_owner(console)
    await browser.close()
    secret, now = console.settings.console_secret, datetime.now(UTC)
    good = ownerpass.mint(secret, account["account_id"], now)
    status, created = await console.http("POST", "/v1/keys", token=good, json={"name": "via console", "kind": "payg"})
    assert status == 201 and created["key"].startswith("sk-pg-v1-")
    for bad in (
        ownerpass.mint("not-the-secret", account["account_id"], now),
        ownerpass.mint(secret, account["account_id"], now, ttl_s=-1),
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
    ):
        status, body = await console.http("GET", "/v1/keys", token=bad)
        assert status == 401 and body["error"]["field"] == "Authorization"


async def test_one_owner_sees_and_changes_nothing_of_another_account(console: Stack) -> None:
    _, alice_browser = await new_owner(console)
    bob, bob_browser = await new_owner(console)
    try:
        _, bob_page = await bob_browser.get("/subscription")
        bob_key_ids = re.findall(r'data-key-id="([^"]+)"', bob_page)
        assert bob["key_id"] in bob_key_ids
        _, alice_page = await alice_browser.get("/subscription")
        for key_id in bob_key_ids:
            assert key_id not in alice_page
        assert bob["account_id"] not in alice_page
        for key_id in bob_key_ids:
            for action in ("rotate", "revoke"):
                response = await alice_browser.post(f"/keys/{key_id}/{action}", {}, csrf_from="/subscription")
                assert response.status == 404, (action, key_id)
        response = await alice_browser.post(
            "/extra-usage", {"enabled": "true", "payg_key_id": bob_key_ids[0]}, csrf_from="/subscription"
        )
        assert response.status == 400
        status, usage = await console.http("GET", "/v1/account/usage", token=bob["key"])
        assert status == 200 and usage["extra_usage"]["enabled"] is False
        _, keys = await console.http("GET", "/v1/keys", token=bob["key"])
        assert all(k["revoked_at"] is None for k in keys["data"])

        async def bob_key_works() -> bool:
            status, _ = await console.http("GET", "/v1/account/usage", token=bob["key"])
            return status == 200

        assert await eventually(bob_key_works)
    finally:
        await alice_browser.close()
        await bob_browser.close()


async def test_usage_is_paged_filtered_by_key_and_model_and_costed_by_model(console: Stack) -> None:
    account, browser = await new_owner(console)
    try:
        status, second = await console.http(
            "POST", "/v1/keys", token=account["management_key"], json={"name": "second", "kind": "subscription"}
        )
        assert status == 201
        events = [usage_event(account["account_id"], key_id=account["key_id"]) for _ in range(22)]
        events += [usage_event(account["account_id"], key_id=second["id"], model="qwen/qwen3-14b") for _ in range(3)]
        status, body = await console.post_usage(events)
        assert status == 202, body

        async def all_listed() -> bool:
            _, body = await console.http("GET", "/v1/account/usage/events?limit=100", token=account["key"])
            return len(body["data"]) == 25

        await eventually(all_listed, within=30, interval=0.5)
        _, first = await browser.get("/subscription")
        assert first.count("<tr><td><time") == 20 and ">Older<" in first and ">Newer<" not in first
        older = re.search(r'<a href="/subscription\?([^"#]+)#usage" rel="next">', first)
        assert older is not None
        _, second_page = await browser.get("/subscription?" + older.group(1).replace("&amp;", "&"))
        assert second_page.count("<tr><td><time") == 5 and ">Older<" not in second_page and ">Newer<" in second_page
        _, by_model = await browser.get("/subscription?model=qwen/qwen3-14b")
        assert by_model.count("<tr><td><time") == 3 and ">Older<" not in by_model
        _, by_key = await browser.get(f"/subscription?key={second['id']}")
        calls = by_key.split("Cost by model", 1)[0]
        assert calls.count("<tr><td><time") == 3 and "deepseek/deepseek-chat</td>" not in calls
        costs = first.split('aria-label="Cost by model (30 days)"', 1)[1].split("</table>", 1)[0]
        assert "<td>deepseek/deepseek-chat</td><td>22</td>" in costs and "<td>qwen/qwen3-14b</td><td>3</td>" in costs
        assert 'aria-label="Flows per hour"' in first
        _, daily = await browser.get("/subscription?chart=day")
        assert 'aria-label="Flows per day"' in daily
    finally:
        await browser.close()


async def mailbox(console: Stack) -> list[dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{console.settings.simulator_port}/mailbox", headers={"Accept": "application/json"}
        ) as response,
    ):
        return list((await response.json())["messages"])


async def test_sign_up_checks_its_input_is_limited_per_address_and_finishes_from_the_mail_once(console: Stack) -> None:
    taken, owner_browser = await new_owner(console)
    await owner_browser.close()
    visitor = Browser(console)

    async def sign_up(email: str) -> tuple[int, str]:
        """The answer, with what may differ for any two answers (the email, tokens) taken out."""
        form = {"email": email, "password": PASSWORD, "csrf": token((await visitor.get("/sign-up"))[1])}
        async with visitor.session.post(console.console_url + "/sign-up", data=form) as response:
            text = (await response.text()).replace(email, "EMAIL")
            return response.status, re.sub(r'value="[^"]*"', "", text)

    try:
        assert (await visitor.post("/sign-up", {"email": "not-an-email", "password": PASSWORD})).status == 400
        assert (await visitor.post("/sign-up", {"email": "a@example.com", "password": "short"})).status == 400
        emails = [f"signup-{uuid.uuid4().hex[:8]}@example.com" for _ in range(console.settings.sign_ups_per_hour)]
        pages = {email: await sign_up(email) for email in [taken["email"], *emails[:-1]]}  # the taken one counts
        assert {status for status, _ in pages.values()} == {202}
        # A taken email is answered exactly as a new one: only its mail differs.
        assert pages[taken["email"]] == pages[emails[0]] and "Check your email" in pages[emails[0]][1]
        assert (await sign_up(emails[-1]))[0] == 429
        messages = await mailbox(console)
        [taken_mail] = [m for m in messages if m["to"] == taken["email"]]
        assert taken_mail["subject"] == "Your flowplan account" and "/sign-up/finish/" not in taken_mail["text"]
        sent = [m for m in messages if m["to"] in emails]
        assert sorted(m["to"] for m in sent) == sorted(emails[:-1])
        assert all(set(m) == {"to", "subject", "text", "sent_at"} for m in sent)
        assert all(m["subject"] == "Finish creating your flowplan account" for m in sent)

        finishing = Browser(console)  # the link may be opened in another browser
        try:
            link = re.search(r"/sign-up/finish/\S+", sent[0]["text"])
            assert link is not None
            status, page = await finishing.get(link.group(0))  # looking creates nothing (mail scanners)
            assert status == 200 and sent[0]["to"] in page
            assert (await finishing.get(link.group(0)))[0] == 200
            created = await finishing.post(link.group(0), {}, csrf_from=link.group(0))
            assert created.status == 201
            status, subscription = await finishing.get("/subscription")
            assert status == 200 and 'data-testid="current-plan">Free<' in subscription
            assert (await finishing.get(link.group(0)))[0] == 410  # once
            assert (await finishing.post(link.group(0), {}, csrf_from="/sign-up")).status == 410
        finally:
            await finishing.close()
    finally:
        await visitor.close()


async def test_an_email_typed_on_the_set_password_page_is_confirmed_by_a_mailed_link_before_a_paid_checkout(
    console: Stack,
) -> None:
    """The operator gave no email: the owner types one when setting the password. A paid checkout
    needs it confirmed, so the console mails a confirmation link (looking at it confirms nothing;
    its button does, once); until then checkout is refused and the page offers the link again."""
    status, account = await console.http(
        "POST", "/admin/v1/accounts", token=console.settings.admin_token, json={"name": "no-email"}
    )
    assert status == 201, account
    email = f"typed-{uuid.uuid4().hex[:8]}@example.com"
    browser, stranger = Browser(console), Browser(console)
    try:
        path = link_path(account["sign_in_url"])
        response = await browser.post(path, {"email": email, "password": PASSWORD})
        assert response.status == 303
        refused = await browser.post("/checkout", {"plan": "max"}, csrf_from="/subscription")
        assert refused.status == 403 and "Location" not in refused.headers
        status, page = await browser.get("/subscription")
        assert 'data-testid="email-unconfirmed"' in page and email in page
        [mail] = [m for m in await mailbox(console) if m["to"] == email]
        assert mail["subject"] == "Confirm your email for flowplan"
        link = re.search(r"/confirm-email/\S+", mail["text"])
        assert link is not None
        status, page = await stranger.get(link.group(0))  # a mail scanner, or the owner's other browser
        assert status == 200 and email in page and "Confirm email" in page
        assert (await browser.post("/checkout", {"plan": "max"}, csrf_from="/subscription")).status == 403
        assert (await stranger.post(link.group(0), {}, csrf_from=link.group(0))).status == 303
        assert (await stranger.get(link.group(0)))[0] == 410  # once
        assert (await stranger.post(link.group(0), {}, csrf_from="/sign-in")).status == 410
        paid = await browser.post("/checkout", {"plan": "max"}, csrf_from="/subscription")
        assert paid.status == 303 and "/provider/checkout/" in paid.headers["Location"]
        assert 'data-testid="email-unconfirmed"' not in (await browser.get("/subscription"))[1]
        # Confirmed owners are sent no more links; a forged link is gone.
        again = await browser.post("/confirm-email", {}, csrf_from="/subscription")
        assert again.status == 303 and again.headers["Location"].startswith("/subscription?email=not-sent")
        assert len([m for m in await mailbox(console) if m["to"] == email]) == 1
        assert (await stranger.get("/confirm-email/not-a-token"))[0] == 410
    finally:
        await browser.close()
        await stranger.close()


async def test_an_unconfirmed_owner_may_ask_for_the_link_again_at_most_once_a_minute(console: Stack) -> None:
    status, account = await console.http(
        "POST", "/admin/v1/accounts", token=console.settings.admin_token, json={"name": "resend"}
    )
    assert status == 201, account
    email = f"resend-{uuid.uuid4().hex[:8]}@example.com"
    browser = Browser(console)
    try:
        assert (
            await browser.post(link_path(account["sign_in_url"]), {"email": email, "password": PASSWORD})
        ).status == 303
        soon = await browser.post("/confirm-email", {}, csrf_from="/subscription")
        assert soon.headers["Location"].startswith("/subscription?email=not-sent")  # the first went out just now
        assert len([m for m in await mailbox(console) if m["to"] == email]) == 1
        assert (await browser.post("/confirm-email", {"csrf": "forged"})).status == 403  # a forged token: refused
    finally:
        await browser.close()


async def test_the_plan_shows_a_downgrade_scheduled_for_the_end_of_the_paid_month(console: Stack) -> None:
    account, browser = await new_owner(console)
    try:
        await console.pay(account["account_id"], "max", "100.00")
        downgrade = await console.pay(account["account_id"], "pro", "20.00")
        assert downgrade["effective_at"] > datetime.now(UTC).isoformat()

        async def scheduled() -> str:
            _, page = await browser.get("/subscription")
            return page if 'data-testid="scheduled-change"' in page else ""

        page = await eventually(scheduled, within=30, interval=0.5)
        plan = page.split('aria-label="Plan"', 1)[1].split("</section>", 1)[0]
        assert 'data-testid="current-plan">Max<' in plan
        assert "Scheduled change: <strong>Pro</strong>" in plan and downgrade["effective_at"] in plan
    finally:
        await browser.close()


async def test_accounts_are_created_while_the_console_is_down_and_get_their_link_later(console: Stack) -> None:
    admin = console.settings.admin_token
    console.console.kill()
    try:
        status, account = await console.http("POST", "/admin/v1/accounts", token=admin, json={"name": "early"})
        assert status == 201 and account["sign_in_url"] is None and account["key"].startswith("sk-ss-v1-")
        path = f"/admin/v1/accounts/{account['account_id']}/sign-in-link"
        status, error = await console.http("POST", path, token=admin)
        assert status == 503 and error["error"]["code"] == "console_unavailable"
    finally:
        console.console.start()
    status, link = await console.http("POST", path, token=admin, json={"email": f"late-{uuid.uuid4().hex[:6]}@x.org"})
    assert status == 201, link
    browser = Browser(console)
    try:
        response = await browser.post(link_path(link["sign_in_url"]), {"password": PASSWORD})
        assert response.status == 303
        assert account["account_id"] in (await browser.get("/subscription"))[1]
    finally:
        await browser.close()


# -- Studio Chat ------------------------------------------------------------------------------


async def new_chat(browser: Browser) -> str:
    response = await browser.post("/chat", {}, csrf_from="/chat")
    assert response.status == 303 and response.headers["Location"].startswith("/chat/conv_"), response.status
    return response.headers["Location"].removeprefix("/chat/")


async def chat_send(browser: Browser, conversation: str, form: dict[str, str]) -> tuple[int, str, Any]:
    """A message as the page's script sends it: the reply streams back as text."""
    _, page = await browser.get(f"/chat/{conversation}")
    async with browser.session.post(
        f"{browser.base}/chat/{conversation}/messages", data={"csrf": token(page), **form},
        headers={"x-studio-stream": "1"}, allow_redirects=False,
    ) as response:  # fmt: skip
        return response.status, await response.text(), response.headers


async def test_studio_chat_routes_refuse_no_session_no_csrf_bad_input_and_another_owners_conversation(
    console: Stack,
) -> None:
    alice, alice_browser = await new_owner(console)
    _, bob_browser = await new_owner(console)
    stranger = Browser(console)
    try:
        conversation = await new_chat(alice_browser)
        # No session: every route sends to sign-in, whoever's conversation it names.
        for path in ("/chat", f"/chat/{conversation}", f"/chat/{conversation}/cost"):
            async with stranger.session.get(console.console_url + path, allow_redirects=False) as response:
                assert response.status == 303 and response.headers["Location"] == "/sign-in", path
        for path in ("/chat", f"/chat/{conversation}/messages", f"/chat/{conversation}/rename",
                     f"/chat/{conversation}/delete"):  # fmt: skip
            response = await stranger.post(path, {"message": "hi", "title": "x"}, csrf_from="/sign-in")
            assert response.status == 303 and response.headers["Location"] == "/sign-in", path
        # No CSRF token, or another's: 403, nothing changes.
        for path in ("/chat", f"/chat/{conversation}/messages", f"/chat/{conversation}/rename",
                     f"/chat/{conversation}/delete"):  # fmt: skip
            for csrf in (None, "0" * 64):
                form = {"title": "renamed", "message": "hi", "billing_mode": "payg", "model": "deepseek/deepseek-chat"}
                sent = form if csrf is None else {**form, "csrf": csrf}
                response = await alice_browser.session.post(console.console_url + path, data=sent,
                                                            allow_redirects=False)  # fmt: skip
                assert response.status == 403, (path, csrf)
        # Another owner's conversation is as absent as one that does not exist.
        for owner_browser, name in ((bob_browser, conversation), (alice_browser, "conv_0000000000000000")):
            assert (await owner_browser.get(f"/chat/{name}"))[0] == 404
            assert (await owner_browser.get(f"/chat/{name}/cost"))[0] == 404
            for action in ("messages", "rename", "delete"):
                form = {"title": "mine now", "message": "hi", "billing_mode": "payg", "model": "deepseek/deepseek-chat"}
                response = await owner_browser.post(f"/chat/{name}/{action}", form, csrf_from="/chat")
                assert response.status == 404, (name, action)
        assert conversation not in (await bob_browser.get("/chat"))[1]
        status, page = await alice_browser.get(f"/chat/{conversation}")
        assert status == 200 and "New chat" in page and 'aria-label="You"' not in page
        # Bad input: a 400 naming the field, and nothing sent to the gateway.
        good = {"message": "hello", "billing_mode": "subscription", "model": "deepseek/deepseek-chat"}
        for field, bad in (("message", "  "), ("billing_mode", "free"), ("model", "no/such-model"),
                           ("message", "x" * 32_001)):  # fmt: skip
            status, text, _ = await chat_send(alice_browser, conversation, {**good, field: bad})
            assert status == 400 and text.startswith(f"{field}:"), (field, status, text)
        response = await alice_browser.post(f"/chat/{conversation}/rename", {"title": " "}, csrf_from="/chat")
        assert response.status == 400
        _, calls = await console.http("GET", "/v1/account/usage/events", token=alice["key"])
        assert calls["data"] == []
        # Renamed and deleted by its owner.
        response = await alice_browser.post(f"/chat/{conversation}/rename", {"title": "Trip plans"},
                                            csrf_from=f"/chat/{conversation}")  # fmt: skip
        assert response.status == 303
        assert "Trip plans" in (await alice_browser.get("/chat"))[1]
        response = await alice_browser.post(f"/chat/{conversation}/delete", {}, csrf_from=f"/chat/{conversation}")
        assert response.status == 303 and response.headers["Location"] == "/chat"
        assert (await alice_browser.get(f"/chat/{conversation}"))[0] == 404
    finally:
        for b in (alice_browser, bob_browser, stranger):
            await b.close()


async def test_a_control_character_in_an_address_or_a_form_is_a_400_page_never_a_500(console: Stack) -> None:
    """A NUL reaching Postgres was a 500: in the sign-in or sign-up email (no session needed) and in
    a conversation's id or title. Tabs and line breaks stay allowed in a form (a chat message)."""
    _, owner = await new_owner(console)
    anyone = Browser(console)
    try:
        conversation = await new_chat(owner)
        refused = [
            await anyone.post("/sign-in", {"email": "a\x00@example.com", "password": PASSWORD}),
            await anyone.post("/sign-up", {"email": "a\x00@example.com", "password": PASSWORD}),
            await owner.post(f"/chat/{conversation}/rename", {"title": "a\x00b"}, csrf_from="/chat"),
            await owner.post(f"/chat/{conversation}/rename", {"title": "a\x1bb"}, csrf_from="/chat"),
            await owner.post("/chat/%00/rename", {"title": "x"}, csrf_from="/chat"),
            await owner.post(f"/chat/{conversation}/messages", {"message": "hi\x00"}, csrf_from="/chat"),
        ]
        assert [r.status for r in refused] == [400] * len(refused)
        for path in ("/chat/%00", "/chat/%00/cost", "/pricing?lang=%00", "/sign-in/link/%01"):
            status, page = await owner.get(path)
            assert status == 400 and "control characters" in page, (path, status)
        response = await owner.post(f"/chat/{conversation}/rename", {"title": "Trip\tplans\n"}, csrf_from="/chat")
        assert response.status == 303
        titles = (await owner.get("/chat"))[1]
        assert "Trip plans" in titles and "a\x1bb" not in titles  # the tab passed; the refused titles did not
    finally:
        await anyone.close()
        await owner.close()


async def gateway_call(stack: Stack, token: str, path: str = "/v1/chat/completions",
                       **headers: str) -> tuple[int, Any, Any]:  # fmt: skip
    body = {"model": "deepseek/deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.gateway_url + path, json=body, headers={"Authorization": f"Bearer {token}", **headers}
        ) as response,  # fmt: skip
    ):
        return response.status, await response.json(content_type=None), response.headers


async def test_the_gateway_takes_a_chat_pass_for_model_calls_only_never_forged_altered_expired_or_elsewhere(
    console: Stack,
) -> None:
    alice, alice_browser = await new_owner(console)
    bob, bob_browser = await new_owner(console)
    await alice_browser.close()
    await bob_browser.close()
    secret, now = console.settings.console_secret, datetime.now(UTC)
    chat = chatpass.ChatPass(alice["account_id"], "subscription", "conv_0123456789abcdef")
    good = chatpass.mint(secret, chat, now)
    status, body, headers = await gateway_call(console, good)
    assert status == 200 and headers["x-flowplan-billing-mode"] == "subscription", body

    async def metered() -> Any:
        path = f"/v1/account/usage/events?conversation_id={chat.conversation_id}"
        _, calls = await console.http("GET", path, token=alice["key"])
        return calls["data"]

    [call] = await eventually(metered)
    assert call["conversation_id"] == chat.conversation_id and call["key_id"] is None
    assert call["billing_mode"] == "subscription" and call["flows"] > 0
    for bad in (
        chatpass.mint("not-the-secret", chat, now),  # forged
        chatpass.mint(secret, chat, now, ttl_s=-1),  # expired
        good.replace(".subscription.", ".payg."),  # another billing mode
        good.replace(alice["account_id"], bob["account_id"]),  # another account
        chatpass.mint(secret, chat, now)[:-2] + "AA",
        ownerpass.mint(secret, alice["account_id"], now),  # the account API's pass is no model credential
    ):
        status, body, _ = await gateway_call(console, bad)
        assert status == 401 and body["error"]["code"] == "invalid_api_key", (bad, body)
    # Model calls only: not the model list, not token counting, not the account API.
    async with aiohttp.ClientSession() as session:
        async with session.get(console.gateway_url + "/v1/models", headers={"Authorization": f"Bearer {good}"}) as r:
            assert r.status == 401
    status, _, _ = await gateway_call(console, good, "/v1/messages/count_tokens", **{"anthropic-version": "2023-06-01"})
    assert status == 401
    status, body = await console.http("GET", "/v1/account/usage", token=good)
    assert status == 401
    # A model key's billing follows its kind, whatever the request says.
    status, _, headers = await gateway_call(console, alice["key"], **{"x-flowplan-billing-mode": "payg"})
    assert status == 200 and headers["x-flowplan-billing-mode"] == "subscription"
    # A PAYG conversation on an empty balance is refused as a PAYG key is.
    status, body, _ = await gateway_call(console, chatpass.mint(secret, chat._replace(billing_mode="payg"), now))
    assert status == 402 and body["error"]["code"] == "insufficient_balance"


async def test_studio_chat_shows_a_refusal_with_its_reason_and_reset_then_overflows_to_payg_with_extra_usage(
    console: Stack,
) -> None:
    account, browser = await new_owner(console)
    try:
        conversation = await new_chat(browser)
        form = {"message": "hello there", "billing_mode": "subscription", "model": "deepseek/deepseek-chat"}
        status, text, headers = await chat_send(browser, conversation, form)
        assert status == 200 and text and headers["x-flowplan-billing-mode"] == "subscription"
        # A metering client uses up the 5-hour window: the next message is refused, saying why and when.
        heavy = usage_event(account["account_id"], model="z-ai/glm-4.7", input_tokens=200_000, output_tokens=20_000)
        assert (await console.post_usage([heavy]))[0] == 202

        async def exhausted() -> bool:
            _, usage = await console.http("GET", "/v1/account/usage", token=account["key"])
            return bool(usage["window_5h"]["remaining_flows"] == 0)

        await eventually(exhausted)
        status, text, _ = await chat_send(browser, conversation, {**form, "message": "and again"})
        assert status == 429 and "quota_exhausted" in text and "The window resets at" in text, text
        _, page = await browser.get(f"/chat/{conversation}")
        assert 'role="alert"' in page and "quota_exhausted" in page  # kept with the conversation
        # With Extra Usage on, the subscription conversation overflows to PAYG as the API does.
        status, key = await console.http("POST", "/v1/keys", token=account["management_key"],
                                         json={"name": "overflow", "kind": "payg"})  # fmt: skip
        assert status == 201
        status, _ = await console.http(
            "POST", f"/admin/v1/accounts/{account['account_id']}/balance", token=console.settings.admin_token,
            json={"amount_usd": "1.00"},
        )  # fmt: skip
        assert status == 201
        status, _ = await console.http("PUT", "/v1/account/extra-usage", token=account["management_key"],
                                       json={"enabled": True, "payg_key_id": key["id"]})  # fmt: skip
        assert status == 200
        status, text, headers = await chat_send(browser, conversation, {**form, "message": "overflow please"})
        assert status == 200 and text and headers["x-flowplan-billing-mode"] == "payg"

        async def costed() -> Any:
            _, calls = await console.http(
                "GET", f"/v1/account/usage/events?conversation_id={conversation}", token=account["key"]
            )
            return calls["data"] if len(calls["data"]) == 2 else None

        calls = await eventually(costed)
        assert [c["billing_mode"] for c in calls] == ["payg", "subscription"]
        _, page = await browser.get(f"/chat/{conversation}")
        assert f"${calls[0]['usd_cost']}".rstrip("0") in page
    finally:
        await browser.close()
