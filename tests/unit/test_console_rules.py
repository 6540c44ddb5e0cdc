"""The console's pure rules: the owner pass ingress accepts, CSRF tokens, sessions' expiry, the
wrong-password lockout, and what the subscription page makes of the account API's answers."""

from datetime import UTC, datetime, timedelta

from libs import chatpass, ownerpass
from services.console import auth, i18n, views

NOW = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


def test_owner_pass_names_its_account_until_it_expires_and_only_with_the_secret() -> None:
    token = ownerpass.mint("s3cret", "acc_0123456789abcdef", NOW, ttl_s=60)
    assert ownerpass.is_owner_pass(token)
    assert ownerpass.verify("s3cret", token, NOW + timedelta(seconds=59)) == "acc_0123456789abcdef"
    assert ownerpass.verify("s3cret", token, NOW + timedelta(seconds=60)) is None
    assert ownerpass.verify("other", token, NOW) is None
    forged = token.replace("acc_0123456789abcdef", "acc_fedcba9876543210")
    assert ownerpass.verify("s3cret", forged, NOW) is None
    assert ownerpass.verify("s3cret", "cs-v1-garbage", NOW) is None


def test_chat_pass_grants_its_account_mode_and_conversation_until_it_expires_and_nothing_altered() -> None:
    chat = chatpass.ChatPass("acc_0123456789abcdef", "subscription", "conv_abc123")
    token = chatpass.mint("s3cret", chat, NOW, ttl_s=60)
    assert chatpass.is_chat_pass(token) and not ownerpass.is_owner_pass(token)
    assert chatpass.verify("s3cret", token, NOW + timedelta(seconds=59)) == chat
    assert chatpass.verify("s3cret", token, NOW + timedelta(seconds=60)) is None  # expired
    assert chatpass.verify("other", token, NOW) is None  # not the console's secret
    for altered in (
        token.replace(".subscription.", ".payg."),  # another billing mode
        token.replace("conv_abc123", "conv_abc124"),  # another conversation
        token.replace("acc_0123456789abcdef", "acc_fedcba9876543210"),  # another account
        token.replace(f".{int(NOW.timestamp()) + 60}.", f".{int(NOW.timestamp()) + 6000}."),  # a longer life
    ):
        assert altered != token and chatpass.verify("s3cret", altered, NOW) is None
    # Neither credential passes for the other, though both are signed with the same secret.
    owner = ownerpass.mint("s3cret", chat.account_id, NOW)
    assert chatpass.verify("s3cret", owner, NOW) is None
    assert ownerpass.verify("s3cret", token, NOW) is None
    assert chatpass.verify("s3cret", "cc-v1-garbage", NOW) is None


def test_csrf_token_fits_only_its_cookie() -> None:
    token = auth.csrf_token("k", "cookie-a")
    assert auth.csrf_ok("k", "cookie-a", token)
    assert not auth.csrf_ok("k", "cookie-b", token)
    assert not auth.csrf_ok("k", None, token)
    assert not auth.csrf_ok("k", "cookie-a", None)


def test_sessions_end_when_idle_too_long_too_old_or_signed_out() -> None:
    assert auth.session_alive(NOW, NOW, None, NOW + timedelta(minutes=5))
    assert not auth.session_alive(NOW, NOW, None, NOW + auth.SESSION_IDLE)
    busy = NOW + auth.SESSION_ABSOLUTE - timedelta(minutes=1)
    assert auth.session_alive(NOW, busy, None, busy + timedelta(seconds=30))
    assert not auth.session_alive(NOW, busy, None, NOW + auth.SESSION_ABSOLUTE)
    assert not auth.session_alive(NOW, NOW, NOW, NOW + timedelta(seconds=1))


def test_lockout_slows_each_wrong_password_more_then_locks() -> None:
    rule = auth.Lockout(per_email=5, per_address=20, step_s=0.25, max_delay_s=2.0)
    assert [rule.delay_s(n) for n in (1, 2, 4, 100)] == [0.25, 0.5, 1.0, 2.0]
    assert not rule.locked(4, 19)
    assert rule.locked(5, 0) and rule.locked(0, 20)


def test_passwords_are_argon2id_and_checked() -> None:
    hashed = auth.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert auth.password_matches(hashed, "correct horse battery")
    assert not auth.password_matches(hashed, "wrong")
    assert not auth.password_matches(None, "anything")
    assert auth.password_problem("short") and auth.password_problem("long enough!") is None


def test_money_and_flows_as_the_page_shows_them_in_each_language() -> None:
    assert views.usd("18.05") == "$18.05" and views.usd(None) == "—" and views.usd("1234.5") == "$1,234.50"
    assert views.usd("54.55", "zh") == "US$54.55"  # CLDR's dollar in Simplified Chinese
    assert views.usd_exact("9.998765") == "$9.998765" and views.usd_exact("10.000000") == "$10.00"
    assert views.usd_exact("1250.5", "zh") == "US$1,250.50" and views.flows_exact("-0.25") == "-0.25"
    assert views.flows(2160) == "2,160.00" and views.flows(0.123456) == "0.12"
    assert views.count(12000) == "12,000" and views.count(0) == "0"


def test_times_are_written_in_the_owners_zone_as_the_language_writes_them() -> None:
    shanghai = views.zone("Asia/Shanghai")
    assert views.when("2026-11-30T09:00:00Z") == "Nov 30, 2026, 9:00 AM"
    assert views.when("2026-11-30T17:05:00Z", "en", shanghai) == "Dec 1, 2026, 1:05 AM"
    assert views.when("2026-11-30T17:05:00Z", "zh", shanghai) == "2026年12月1日 01:05"
    assert views.when("2026-11-30T12:30:00Z", "en", views.zone("America/New_York")) == "Nov 30, 2026, 7:30 AM"
    assert views.when(None) == "—"
    for bad in (None, "", "Mars/Olympus", "../../etc/passwd", "/etc/localtime", "x" * 100):
        assert views.zone(bad) == views.UTC_ZONE, bad


def test_the_chart_sums_flows_per_hour_over_five_hours_and_per_day_over_a_week() -> None:
    now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    events = [  # the subscription's Flows per UTC hour, as the account API's costs by hour give them
        {"hour": "2026-11-30T10:00:00Z", "flows": 2.0},
        {"hour": "2026-11-30T06:00:00Z", "flows": 3},
        {"hour": "2026-11-30T05:00:00Z", "flows": 100},  # before the 5 hours shown
        {"hour": "2026-11-25T12:00:00Z", "flows": 4},
    ]
    hourly = views.chart(events, now, "hour")
    assert [b["label"] for b in hourly["bars"]] == ["06:00", "07:00", "08:00", "09:00", "10:00"]
    assert [b["flows"] for b in hourly["bars"]] == ["3", "0", "0", "0", "2.0"]
    assert [b["height"] for b in hourly["bars"]] == [120, 0, 0, 0, 80]
    daily = views.chart(events, now, "day")
    assert [b["label"] for b in daily["bars"]][-1] == "11-30" and len(daily["bars"]) == 7
    assert daily["bars"][1]["flows"] == "4" and daily["bars"][-1]["flows"] == "105.0"
    assert not hourly["empty"] and not daily["empty"]


def test_a_chart_with_no_calls_in_its_period_says_so() -> None:
    now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    old = [{"hour": "2026-11-30T04:00:00Z", "flows": 5}, {"hour": "2026-11-30T09:00:00Z", "flows": 0}]
    assert views.chart([], now, "hour")["empty"] and views.chart(old, now, "hour")["empty"]
    assert not views.chart(old, now, "day")["empty"]


def test_the_month_view_shows_thirty_days_naming_every_fifth_and_the_links_keep_the_filters() -> None:
    now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
    hours = [{"hour": "2026-11-01T00:00:00Z", "flows": 2}, {"hour": "2026-10-31T23:00:00Z", "flows": 9}]
    month = views.chart(hours, now, "month")
    assert len(month["bars"]) == 30 and month["bars"][0]["label"] == "11-01" and month["bars"][0]["flows"] == "2"
    assert [b["tick"] for b in month["bars"] if b["tick"]] == ["11-05", "11-10", "11-15", "11-20", "11-25", "11-30"]
    assert month["title"] == "Flows per day" and month["width"] == 30 * 24
    assert views.chart_view("month") == "month" and views.chart_view("year") == views.chart_view(None) == "hour"
    links = views.chart_links({"key": "k_1", "chart": "month"}, "month")
    assert [(link["label"], link["query"]) for link in links] == [
        ("Per hour (5-hour view)", "key=k_1"), ("Per day (week view)", "key=k_1&chart=day")
    ]  # fmt: skip


def test_the_chart_counts_the_owners_hours_and_days_in_their_time_zone() -> None:
    now = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)  # 18:30 in Shanghai, 05:30 in New York
    events = [
        {"hour": "2026-11-30T10:00:00Z", "flows": 1},  # Shanghai's 18:00 hour, its Nov 30
        {"hour": "2026-11-29T17:00:00Z", "flows": 2},  # Shanghai's Nov 30 01:00, UTC's Nov 29
        {"hour": "2026-11-29T15:00:00Z", "flows": 4},  # Shanghai's Nov 29 23:00
    ]
    shanghai = views.zone("Asia/Shanghai")
    hourly = views.chart(events, now, "hour", shanghai)
    assert [b["label"] for b in hourly["bars"]] == ["14:00", "15:00", "16:00", "17:00", "18:00"]
    assert hourly["bars"][-1]["flows"] == "1"
    daily = views.chart(events, now, "day", shanghai)
    assert [b["label"] for b in daily["bars"]][-2:] == ["11-29", "11-30"]
    assert [b["flows"] for b in daily["bars"]][-2:] == ["4", "3"]
    assert [b["flows"] for b in views.chart(events, now, "day")["bars"]][-2:] == ["6", "1"]  # UTC's days
    india = views.chart(events, now, "hour", views.zone("Asia/Kolkata"))  # half-hour offset: hours labelled so
    assert [b["label"] for b in india["bars"]] == ["11:30", "12:30", "13:30", "14:30", "15:30"]


def test_language_from_the_switch_else_accept_language() -> None:
    assert i18n.choose(None, "zh-CN,zh;q=0.9,en;q=0.8") == "zh"
    assert i18n.choose(None, "en-US,en;q=0.9,zh;q=0.8") == "en"
    assert i18n.choose(None, "fr-FR, zh-TW;q=0.5") == "zh"
    assert i18n.choose(None, "en;q=0.2, zh;q=0.7") == "zh"
    assert i18n.choose(None, "") == "en" and i18n.choose(None, "de") == "en"
    assert i18n.choose("en", "zh-CN") == "en" and i18n.choose("xx", "zh-CN") == "zh"
    assert i18n.translator("zh")("Extra Usage") == "额外用量" and i18n.translator("en")("Extra Usage") == "Extra Usage"


def test_every_text_the_templates_translate_has_its_chinese() -> None:
    import re
    from pathlib import Path

    texts = set()
    for template in (Path(views.__file__).parent / "templates").glob("*.html"):
        texts |= set(re.findall(r'_\("([^"]+)"\)', template.read_text()))
    texts |= {title for _, title in views.WINDOWS} | set(views.KIND_NAMES.values()) | set(views.ENTRY_NAMES.values())
    assert sorted(texts - set(i18n.ZH)) == []


def test_plan_flows_as_written() -> None:
    assert views.count(2160) == "2,160" and views.count(50.4) == "50.4" and views.count("34560") == "34,560"


def test_extra_usage_spend_counts_only_subscription_keys_calls_billed_to_the_balance() -> None:
    window = {"used_flows": 1, "limit_flows": 5, "remaining_flows": 4, "resets_at": None}
    usage = {"plan": "free", "window_5h": window, "weekly": window, "monthly": window,
             "extra_usage": {"enabled": True, "payg_key_id": "k_pg", "balance_usd": "5.000000"}}  # fmt: skip
    keys = [
        {"id": i, "name": i, "kind": kind, "revoked_at": None}
        for i, kind in [("k_ss", "subscription"), ("k_pg", "payg")]
    ]
    call = {"model": "m", "occurred_at": "2026-11-30T03:00:00Z", "flows": 0}
    payg = [  # the latest calls billed to the balance
        {**call, "key_id": "k_ss", "billing_mode": "payg", "usd_cost": "0.25"},  # overflow: Extra Usage
        {**call, "key_id": "k_pg", "billing_mode": "payg", "usd_cost": "1.00"},  # the PAYG key itself
    ]
    plans = {"plans": [], "usd_per_flow": "0.025"}
    calls = {"data": payg[:1], "next_cursor": None, "prev_cursor": None}
    context = views.subscription("acc_1", usage, calls, payg, [], keys, [], [], plans, NOW, {}, [])
    assert context["extra"]["spent_usd"] == "0.25" and context["extra"]["key"]["id"] == "k_pg"


def test_the_pager_links_carry_the_api_cursors_with_the_filters() -> None:
    window = {"used_flows": 1, "limit_flows": 5, "remaining_flows": 4, "resets_at": None}
    usage = {"plan": "free", "window_5h": window, "weekly": window, "monthly": window,
             "extra_usage": {"enabled": False, "payg_key_id": None, "balance_usd": "0"}}  # fmt: skip
    plans = {"plans": [], "usd_per_flow": "0.025"}
    filters = {"key": "k_1", "model": "qwen/qwen3-14b"}
    first = {"data": [], "next_cursor": "b1", "prev_cursor": None}
    context = views.subscription("acc_1", usage, first, [], [], [], [], [], plans, NOW, filters, [])
    assert context["older"] == "key=k_1&model=qwen%2Fqwen3-14b&before=b1" and context["newer"] is None
    assert context["models"] == ["qwen/qwen3-14b"]
    last = {"data": [], "next_cursor": None, "prev_cursor": "a1"}
    context = views.subscription("acc_1", usage, last, [], [], [], [], [], plans, NOW, {}, [])
    assert context["older"] is None and context["newer"] == "after=a1"


def test_a_conversation_costs_flows_for_its_subscription_calls_and_usd_for_its_payg_ones() -> None:
    events = [
        {"billing_mode": "subscription", "flows": 0.012345, "usd_cost": "0.000311"},
        {"billing_mode": "payg", "flows": 0.5, "usd_cost": "0.012600"},  # overflow or a PAYG message
        {"billing_mode": "subscription", "flows": 1, "usd_cost": "0.025000"},
    ]
    cost = views.conversation_cost(events)
    assert cost == {"flows": "1.012345", "usd": "0.012600", "calls": 3}
    assert views.flows_exact(cost["flows"]) == "1.012345" and views.flows_exact("0") == "0.00"
    assert views.conversation_cost([]) == {"flows": "0", "usd": "0", "calls": 0}


def test_chat_offers_the_plans_models_on_subscription_and_checks_the_form_naming_the_field() -> None:
    catalog = [{"id": "a/free", "plans": ["free", "pro"]}, {"id": "b/pro", "plans": ["pro"]}, {"id": "c/none"}]
    assert views.chat_models(catalog, "free") == [
        {"id": "a/free", "in_plan": True}, {"id": "b/pro", "in_plan": False}, {"id": "c/none", "in_plan": False},
    ]  # fmt: skip
    ids = {"a/free", "b/pro"}
    assert views.chat_problem("hi", "payg", "b/pro", ids) is None
    bad = [("", "payg", "a/free", "message"), ("x" * 32_001, "payg", "a/free", "message"),
           ("hi", "free", "a/free", "billing_mode"), ("hi", "payg", "z/z", "model")]  # fmt: skip
    for text, mode, model, field in bad:
        assert (views.chat_problem(text, mode, model, ids) or "").startswith(f"{field}:")


def test_cookies_are_secure_when_owners_reach_the_console_over_https_even_through_a_proxy() -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from libs.clock import SystemClock
    from libs.settings import load_settings
    from services.console.site import Site

    def cookie(console_url: str) -> str:
        site = Site(load_settings({}, console_url=console_url), None, SystemClock())  # type: ignore[arg-type]
        response = web.Response()
        site.set_cookie(make_mocked_request("GET", "/"), response, "fp_session", "s", 60)  # plain http here
        return response.cookies["fp_session"].output()

    behind_tls = cookie("https://console.example.com")
    assert "Secure" in behind_tls and "HttpOnly" in behind_tls and "SameSite=Lax" in behind_tls
    assert "Secure" not in cookie("http://127.0.0.1:8088") and "Secure" not in cookie("")
