"""What the subscription page shows, shaped from the account API's answers. Pure: no I/O.

Numbers, money and times are written for the page's language and, for times, in the owner's time
zone (the browser's, which console.js keeps in the `fp_tz` cookie; UTC until it has). English and
Simplified Chinese group digits alike (CLDR: "2,160.00"); they differ in the dollar's symbol and in
how a date and time are written."""

from bisect import bisect_right
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, get_args
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from libs.pricing.catalog import FREE
from proto.v1.events import BillingMode

WINDOWS = (("window_5h", "5-hour window"), ("weekly", "This week"), ("monthly", "This month"))
KIND_NAMES = {"subscription": "Subscription", "payg": "Pay As You Go", "management": "Management"}
ENTRY_NAMES = {"payment": "Payment", "plan_change": "Plan change", "top_up": "Top-up", "refund": "Refund"}
REFUSALS = {
    "free_plan": "Only a paid plan can be refunded; this account is on Free.",
    "window_passed": "The 24 hours for a refund of this payment have passed.",
    "usage_exceeds_payment": "The usage since the payment is worth more than the payment.",
    "nothing_to_refund": "There is nothing left to refund.",
    "already_refunded": "This payment was already refunded.",
    "refund_in_progress": "A refund of this payment is in progress.",
}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


UTC_ZONE = ZoneInfo("UTC")
DOLLAR = {"en": "$", "zh": "US$"}  # CLDR's symbol for USD in English and in Simplified Chinese
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def zone(name: str | None) -> ZoneInfo:
    """The owner's time zone by its IANA name (from the browser); UTC when unknown or not one."""
    if not name or len(name) > 64:
        return UTC_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):  # ValueError: not a zone key at all (a path, say)
        return UTC_ZONE


def when(value: str | None, lang: str = "en", tz: ZoneInfo = UTC_ZONE) -> str:
    """A moment in the owner's time zone, as the language writes it (like the browser's Intl
    medium date and short time): "Nov 30, 2026, 5:56 PM" and "2026年11月30日 17:56"."""
    moment = parse_time(value)
    if moment is None:
        return "—"
    local = moment.astimezone(tz)
    if lang == "zh":
        return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M}"
    hour = local.hour % 12 or 12
    return f"{MONTHS[local.month - 1]} {local.day}, {local.year}, {hour}:{local:%M} {'AM' if local.hour < 12 else 'PM'}"


def flows(value: float | int | str) -> str:
    number = Decimal(str(value)).quantize(Decimal("0.01"))
    return f"{number:,}"


def count(value: float | int | str) -> str:
    """A count, or a plan's Flows as written in the plans file, grouped: 2,160 and 50.4."""
    number = Decimal(str(value))
    return f"{number:,.0f}" if number == number.to_integral_value() else f"{number.normalize():,}"


def usd(value: str | None, lang: str = "en") -> str:
    return "—" if value is None else f"{DOLLAR.get(lang, '$')}{Decimal(value).quantize(Decimal('0.01')):,}"


def usd_exact(value: str, lang: str = "en") -> str:
    """A balance to the micro-dollar (PAYG calls cost fractions of a cent), at least to the cent."""
    return f"{DOLLAR.get(lang, '$')}{flows_exact(value)}"


def flows_exact(value: float | int | str) -> str:
    """To the micro-unit (a chat message costs hundredths of a Flow), at least to two decimals, grouped."""
    number = Decimal(str(value))
    whole, _, fraction = f"{abs(number):f}".partition(".")
    return f"{'-' if number < 0 else ''}{int(whole):,}.{fraction.rstrip('0').ljust(2, '0')}"


def refusal(reason: str, message: str) -> str:
    return REFUSALS.get(reason, message)


def ratio(value: str) -> str:
    """A multiplier's fraction text ("5/4") as a decimal ("1.25")."""
    numerator, _, denominator = value.partition("/")
    exact = Decimal(numerator) / Decimal(denominator or 1)
    return f"{exact.quantize(Decimal('0.0001')).normalize():f}"


FILTERS = {
    "ratio": ratio,
    "when": when,
    "flows": flows,
    "count": count,
    "usd": usd,
    "usd_exact": usd_exact,
    "flows_exact": flows_exact,
    "kind_name": KIND_NAMES.get,
    "entry_name": lambda kind: ENTRY_NAMES.get(kind, kind),
}


CHART_HEIGHT = 120


CHART_VIEWS = {"hour": "Per hour (5-hour view)", "day": "Per day (week view)", "month": "Per day (month view)"}
CHART_DAYS = {"day": 7, "month": 30}


def chart_view(asked: str | None) -> str:
    return asked if asked in CHART_VIEWS else "hour"


def chart(hours: list[dict[str, Any]], now: datetime, by: str, tz: ZoneInfo = UTC_ZONE) -> dict[str, Any]:
    """The subscription's Flows per hour over the last 5 hours, or per day over the last 7 or 30
    days, from its Flows per UTC hour (the account API's costs by hour); the hours and days are the
    owner's, in their time zone (a day is midnight to midnight there)."""
    local = now.astimezone(tz)
    if by in CHART_DAYS:
        shown, today = CHART_DAYS[by], local.date()
        days = [today - timedelta(days=shown - 1 - i) for i in range(shown + 1)]  # and the next midnight
        edges = [datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC_ZONE) for d in days]
        labels = [f"{d:%m-%d}" for d in days[:-1]]
    else:  # whole hours of absolute time, labelled by the owner's clock
        hour = now.astimezone(UTC_ZONE).replace(minute=0, second=0, microsecond=0)
        edges = [hour - timedelta(hours=4 - i) for i in range(6)]
        labels = [f"{edge.astimezone(tz):%H:%M}" for edge in edges[:-1]]
    starts, end = edges[:-1], edges[-1]
    totals = [Decimal(0)] * len(starts)
    for row in hours:
        moment = parse_time(row["hour"])
        if moment is None or not starts[0] <= moment < end:
            continue
        totals[bisect_right(starts, moment) - 1] += Decimal(str(row["flows"]))
    top = max(totals) or Decimal(1)
    step = 60 if len(starts) <= 7 else 24  # a month's 30 bars narrower, every fifth day named
    bars = [
        {"label": label, "tick": label if step == 60 or (len(starts) - 1 - i) % 5 == 0 else "",
         "flows": str(total), "height": int(total * CHART_HEIGHT / top), "x": i * step}
        for i, (label, total) in enumerate(zip(labels, totals, strict=True))
    ]  # fmt: skip
    return {
        "by": by,
        "bars": bars,
        "height": CHART_HEIGHT,
        "width": len(bars) * step,
        "bar_width": step * 2 // 3,
        "title": "Flows per hour" if by == "hour" else "Flows per day",
        "empty": not any(totals),  # said in words: bars of height 0 alone read as a broken chart
    }


def chart_links(filters: dict[str, str], shown: str) -> list[dict[str, str]]:
    """The other views of the chart, keeping the key and model filters."""
    kept = {name: value for name, value in filters.items() if name != "chart"}
    return [
        {"label": label, "query": urlencode({**kept, **({"chart": view} if view != "hour" else {})})}
        for view, label in CHART_VIEWS.items()
        if view != shown
    ]


def pricing(plans: dict[str, Any]) -> dict[str, Any]:
    """The plan cards and the chart comparing monthly Flows and their equivalent USD (bars scaled to the largest)."""
    items = plans["plans"]
    top_flows = max((Decimal(str(p["monthly_flows"])) for p in items), default=Decimal(1)) or Decimal(1)
    top_usd = max((Decimal(p["equivalent_usd"]) for p in items), default=Decimal(1)) or Decimal(1)
    chart = [
        {"name": p["name"], "flows": p["monthly_flows"], "usd": p["equivalent_usd"],
         "height": int(Decimal(str(p["monthly_flows"])) * 150 / top_flows),
         "usd_height": int(Decimal(p["equivalent_usd"]) * 150 / top_usd)}
        for p in items
    ]  # fmt: skip
    return {"plans": items, "chart": chart, "usd_per_flow": plans["usd_per_flow"]}


def _window(usage: dict[str, Any], field: str, title: str) -> dict[str, Any]:
    window = usage[field]
    limit = Decimal(str(window["limit_flows"]))
    used = Decimal(str(window["used_flows"]))
    percent = int(min(Decimal(100), used * 100 / limit)) if limit else 0
    return {"id": field, "title": title, "used": window["used_flows"], "limit": window["limit_flows"],
            "remaining": window["remaining_flows"], "percent": percent, "resets_at": window["resets_at"]}  # fmt: skip


def _paged(filters: dict[str, str], direction: str, cursor: str | None) -> str | None:
    """The query of the next page that way, with the same filters; None when there is none."""
    return urlencode({**filters, direction: cursor}) if cursor else None


def subscription(
    account_id: str,
    usage: dict[str, Any],
    calls: dict[str, Any],
    payg_calls: list[dict[str, Any]],
    hours: list[dict[str, Any]],
    keys: list[dict[str, Any]],
    history: list[dict[str, Any]],
    refunds: list[dict[str, Any]],
    plans: dict[str, Any],
    now: datetime,
    filters: dict[str, str],
    costs: list[dict[str, Any]],
    tz: ZoneInfo = UTC_ZONE,
) -> dict[str, Any]:
    """The page's context. `calls` is one page of the per-call detail as the account API gave it
    (filtered by key and model, with its cursors); `payg_calls`, the latest calls billed to the
    balance, give what Extra Usage spent; `hours`, the subscription's Flows per UTC hour, feed the
    chart (every call counted, however many: the API sums them)."""
    names = {k["id"]: k["name"] for k in keys}
    active = [k for k in keys if k["revoked_at"] is None]
    plan_list = plans["plans"]
    current = next((p for p in plan_list if p["id"] == usage["plan"]), None)
    price = Decimal(current["price_usd"]) if current else Decimal(0)
    others = [
        {**p, "verb": verb, "action": f"{verb} {p['name']}"}
        for p in plan_list
        if p["id"] != usage["plan"] and p["id"] != FREE
        for verb in ["Upgrade to" if Decimal(p["price_usd"]) > price else "Downgrade to"]
    ]
    extra = usage["extra_usage"]
    payg_key = next((k for k in keys if k["id"] == extra["payg_key_id"]), None)
    # Extra Usage is a subscription key's call billed to the balance; a PAYG key's own calls are not overflow.
    payg_key_ids = {k["id"] for k in keys if k["kind"] == "payg"}
    spent = sum((Decimal(e["usd_cost"]) for e in payg_calls if e["key_id"] not in payg_key_ids), Decimal(0))
    scheduled = min(
        (h for h in history if h["type"] == "plan_change" and (parse_time(h["occurred_at"]) or now) > now),
        key=lambda h: h["occurred_at"],
        default=None,
    )  # a downgrade waits for the end of the month paid for: billing dates it then
    # The filter offers the models of the page's calls and of the last 30 days' costs, and the one chosen.
    models = {e["model"] for e in calls["data"]} | {c["model"] for c in costs} | {filters.get("model") or ""}
    models.discard("")
    latest_refund = max(refunds, key=lambda r: r["requested_at"] or "", default=None)
    return {
        "account_id": account_id,
        "suspended": bool(usage.get("account_suspended")),
        "plan": current or {"id": usage["plan"], "name": usage["plan"].title()},
        "paid_until": usage["monthly"]["resets_at"] if usage["plan"] != FREE else None,
        "insider": bool(usage.get("insider")),
        "multiplier": usage.get("multiplier", "1"),
        "scheduled": scheduled,
        "other_plans": others,
        "windows": [_window(usage, field, title) for field, title in WINDOWS],
        "events": [{**e, "key_name": names.get(e["key_id"] or "", "—")} for e in calls["data"]],
        "older": _paged(filters, "before", calls["next_cursor"]),
        "newer": _paged(filters, "after", calls["prev_cursor"]),
        "filters": filters,
        "query": urlencode(filters),
        "models": sorted(models),
        "all_keys": keys,
        "chart": chart(hours, now, chart_view(filters.get("chart")), tz),
        "chart_links": chart_links(filters, chart_view(filters.get("chart"))),
        "costs": costs,
        "keys": active,
        "payg_keys": [k for k in active if k["kind"] == "payg"],
        "extra": {
            "enabled": extra["enabled"],
            "key": payg_key,
            "balance_usd": extra["balance_usd"],
            "spent_usd": str(spent),
        },
        "history": history,
        "refund": latest_refund,
        "now": now,
    }


def conversation_cost(events: list[dict[str, Any]]) -> dict[str, Any]:
    """What a Studio Chat conversation has cost, from its calls' usage events: Flows for the calls
    billed to the subscription, USD for those billed to the PAYG balance (PAYG conversations, and
    subscription ones that overflowed through Extra Usage)."""
    flows_used = sum((Decimal(str(e["flows"])) for e in events if e["billing_mode"] == "subscription"), Decimal(0))
    usd_spent = sum((Decimal(e["usd_cost"]) for e in events if e["billing_mode"] == "payg"), Decimal(0))
    return {"flows": str(flows_used), "usd": str(usd_spent), "calls": len(events)}


def chat_models(catalog: list[dict[str, Any]], plan: str) -> list[dict[str, Any]]:
    """Every model, marked whether the plan includes it: Subscription offers those, Pay As You Go all."""
    return [{"id": m["id"], "in_plan": plan in (m.get("plans") or [])} for m in catalog]


MESSAGE_MAX = 32_000


def chat_problem(text: str, billing_mode: str, model: str, model_ids: set[str]) -> str | None:
    """What is wrong with a message form, naming the field; None when nothing is."""
    if not text:
        return "message: write a message to send"
    if len(text) > MESSAGE_MAX:
        return f"message: at most {MESSAGE_MAX:,} characters"
    if billing_mode not in get_args(BillingMode):
        return "billing_mode: Subscription or Pay As You Go"
    if model not in model_ids:
        return "model: choose one of the listed models"
    return None
