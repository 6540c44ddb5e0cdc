"""What the subscription page shows, shaped from the account API's answers. Pure: no I/O."""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, get_args
from urllib.parse import urlencode

from libs.pricing.catalog import FREE
from proto.v1.events import BillingMode

WINDOWS = (("window_5h", "5-hour window"), ("weekly", "This week"), ("monthly", "This month"))
KIND_NAMES = {"subscription": "Subscription", "payg": "Pay As You Go", "management": "Management"}
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


def when(value: str | None) -> str:
    moment = parse_time(value)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "—"


def flows(value: float | int | str) -> str:
    number = Decimal(str(value)).quantize(Decimal("0.01"))
    return f"{number:,}"


def count(value: float | int | str) -> str:
    """A plan's Flows as written in the plans file, grouped: 2,160 and 50.4."""
    number = Decimal(str(value))
    return f"{number:,.0f}" if number == number.to_integral_value() else f"{number.normalize():,}"


def usd(value: str | None) -> str:
    return "—" if value is None else f"${Decimal(value).quantize(Decimal('0.01')):,}"


def usd_exact(value: str) -> str:
    """A balance to the micro-dollar (PAYG calls cost fractions of a cent), at least to the cent."""
    return f"${flows_exact(value)}"


def flows_exact(value: float | int | str) -> str:
    """To the micro-unit (a chat message costs hundredths of a Flow), at least to two decimals."""
    whole, _, fraction = f"{Decimal(str(value)):f}".partition(".")
    return f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"


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
}


CHART_HEIGHT = 120


def chart(events: list[dict[str, Any]], now: datetime, by: str) -> dict[str, Any]:
    """Flows per hour over the last 5 hours, or per UTC day over the last 7 days, from the calls."""
    if by == "day":
        step, count = timedelta(days=1), 7
        end = now.replace(hour=0, minute=0, second=0, microsecond=0) + step
        label = "%m-%d"
    else:
        step, count = timedelta(hours=1), 5
        end = now.replace(minute=0, second=0, microsecond=0) + step
        label = "%H:00"
    starts = [end - step * (count - i) for i in range(count)]
    totals = [Decimal(0)] * count
    for event in events:
        moment = parse_time(event["occurred_at"])
        if moment is None or not starts[0] <= moment < end:
            continue
        totals[int((moment - starts[0]) / step)] += Decimal(str(event["flows"]))
    top = max(totals) or Decimal(1)
    bars = [
        {"label": start.strftime(label), "flows": str(total), "height": int(total * CHART_HEIGHT / top)}
        for start, total in zip(starts, totals, strict=True)
    ]
    return {
        "by": by,
        "bars": bars,
        "height": CHART_HEIGHT,
        "title": "Flows per day" if by == "day" else "Flows per hour",
    }


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
    events: list[dict[str, Any]],
    keys: list[dict[str, Any]],
    history: list[dict[str, Any]],
    refunds: list[dict[str, Any]],
    plans: dict[str, Any],
    now: datetime,
    filters: dict[str, str],
    costs: list[dict[str, Any]],
) -> dict[str, Any]:
    """The page's context. `calls` is one page of the per-call detail as the account API gave it
    (filtered by key and model, with its cursors); `events`, the latest calls, feed the chart, which
    counts every call."""
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
    spent = sum(
        (Decimal(e["usd_cost"]) for e in events if e["billing_mode"] == "payg" and e["key_id"] not in payg_key_ids),
        Decimal(0),
    )
    scheduled = min(
        (h for h in history if h["type"] == "plan_change" and (parse_time(h["occurred_at"]) or now) > now),
        key=lambda h: h["occurred_at"],
        default=None,
    )  # a downgrade waits for the end of the month paid for: billing dates it then
    # The filter offers the models of the latest calls and of the last 30 days' costs, and the one chosen.
    models = {e["model"] for e in events} | {c["model"] for c in costs} | {filters.get("model") or ""}
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
        "chart": chart(events, now, "day" if filters.get("chart") == "day" else "hour"),
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
