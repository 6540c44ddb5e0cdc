"""JSON shapes of the public API (SPEC §4): plans, models, account usage, billing, refunds."""

from datetime import datetime
from fractions import Fraction
from typing import Any

from libs.pricing.catalog import Catalog, model_json
from libs.pricing.money import MICRO, micros_to_number, micros_to_str, micros_to_usd, round_half_up
from proto.v1 import (
    AccountAbuse,
    BillingEntry,
    CostLine,
    KeyView,
    QuotaStatus,
    RefundQuote,
    RefundView,
    UsageEventsReply,
    UsageRecorded,
    WindowStatus,
)
from services.ingress import cursors
from services.ingress.usage import client_event_id


def _decimal(value: Fraction, places: int) -> str:
    return micros_to_str(round_half_up(value * MICRO), places)


def plans(catalog: Catalog, usd_per_flow: Fraction) -> dict[str, Any]:
    items = []
    for plan in catalog.plans.values():
        monthly = Fraction(plan.limits_micros[2], MICRO)
        price = Fraction(plan.price_usd)
        equivalent = monthly * usd_per_flow
        items.append(
            {
                "id": plan.id,
                "name": plan.name,
                "price_usd": plan.price_usd,
                "window_5h_flows": micros_to_number(plan.limits_micros[0]),
                "weekly_flows": micros_to_number(plan.limits_micros[1]),
                "monthly_flows": micros_to_number(plan.limits_micros[2]),
                "rpm": plan.rpm,
                "equivalent_usd": _decimal(equivalent, 2),
                "leverage": float(_decimal(equivalent / price, 2)) if price else None,
                "models": [m.id for m in catalog.models_in_plan(plan.id)],
            }
        )
    return {
        "usd_per_flow": _decimal(usd_per_flow, 6),
        "usd_per_flow_exact": str(usd_per_flow),
        "plans": items,
    }


def models(catalog: Catalog) -> dict[str, Any]:
    return {"object": "list", "data": [model_json(catalog, m) for m in catalog.models.values()]}


def timestamp(when: datetime | None) -> str | None:
    return when.isoformat().replace("+00:00", "Z") if when is not None else None


def _window(w: WindowStatus) -> dict[str, Any]:
    return {
        "used_flows": micros_to_number(w.used_flows_micros),
        "limit_flows": micros_to_number(w.limit_flows_micros),
        "remaining_flows": micros_to_number(w.remaining_flows_micros),
        "reserved_flows": micros_to_number(w.reserved_flows_micros),
        "started_at": timestamp(w.started_at),
        "resets_at": timestamp(w.resets_at),
    }


def account_usage(status: QuotaStatus) -> dict[str, Any]:
    return {
        "plan": status.plan,
        "window_5h": _window(status.window_5h),
        "weekly": _window(status.weekly),
        "monthly": _window(status.monthly),
        "insider": status.insider,
        "multiplier": status.multiplier,
    }


def usage_event(e: UsageRecorded) -> dict[str, Any]:
    return {
        "event_id": client_event_id(e.event_id),
        "model": e.model,
        "input_tokens": e.input_tokens,
        "output_tokens": e.output_tokens,
        "cached_tokens": e.cached_tokens,
        "images": e.images,
        "flows": micros_to_number(e.flows_micros),
        "usd_cost": micros_to_str(e.usd_cost_micros),
        "billing_mode": e.billing_mode,
        "multiplier": e.multiplier,
        "key_id": e.key_id,
        "conversation_id": e.conversation_id,
        "occurred_at": timestamp(e.occurred_at),
    }


def usage_events(reply: UsageEventsReply, *, paged_back: bool, paged_forward: bool) -> dict[str, Any]:
    """A page of calls with the cursors to the next older page and the next newer one (null where
    there is none: `more` says so in the direction asked; the other way, the cursor the request
    came with is a call, so there is one)."""
    calls = reply.events
    older = reply.more if not paged_forward else bool(calls)
    newer = reply.more if paged_forward else paged_back and bool(calls)
    return {
        "object": "list",
        "data": [usage_event(e) for e in calls],
        "next_cursor": cursors.of_call(calls[-1]) if older and calls else None,
        "prev_cursor": cursors.of_call(calls[0]) if newer and calls else None,
    }


def key(k: KeyView) -> dict[str, Any]:
    return {
        "id": k.id,
        "name": k.name,
        "kind": k.kind,
        "prefix": k.prefix,
        "last4": k.last4,
        "created_at": timestamp(k.created_at),
        "last_used_at": timestamp(k.last_used_at),
        "revoked_at": timestamp(k.revoked_at),
    }


def extra_usage(status: QuotaStatus) -> dict[str, Any]:
    """The PAYG side of the account: Extra Usage and the balance, to the micro-dollar (PAYG calls
    cost fractions of a cent; rounding to cents happens only at payout)."""
    return {
        "enabled": status.extra_usage,
        "payg_key_id": status.payg_key_id,
        "balance_usd": micros_to_str(status.balance_micros),
        "reserved_usd": micros_to_str(status.payg_reserved_micros),
    }


def billing_entry(e: BillingEntry) -> dict[str, Any]:
    return {
        "id": e.event_id,
        "type": e.kind,
        "occurred_at": timestamp(e.occurred_at),
        "amount_usd": micros_to_str(e.amount_micros, 2) if e.kind != "plan_change" else None,
        "plan": e.plan,
        "previous_plan": e.previous_plan,
        "reference": e.reference,
    }


def costs(group_by: str, since: datetime, until: datetime, lines: list[CostLine]) -> dict[str, Any]:
    """By model or day: calls, Flows and USD. By hour: the subscription's calls and Flows (no USD)."""
    priced = group_by != "hour"

    def sums(calls: int, flows_micros: int, usd_micros: int) -> dict[str, Any]:
        shown: dict[str, Any] = {"calls": calls, "flows": micros_to_number(flows_micros)}
        return {**shown, "usd": micros_to_str(usd_micros)} if priced else shown

    return {
        "group_by": group_by,
        "from": timestamp(since),
        "to": timestamp(until),
        "data": [{group_by: x.key, **sums(x.calls, x.flows_micros, x.usd_micros)} for x in lines],
        "total": sums(
            sum(x.calls for x in lines), sum(x.flows_micros for x in lines), sum(x.usd_micros for x in lines)
        ),
    }


def refund(r: RefundView) -> dict[str, Any]:
    return {
        "refund_id": r.refund_id,
        "status": r.status,
        "paid_usd": micros_to_usd(r.paid_micros),
        "usage_usd": micros_to_usd(r.usage_micros),
        "refunded_before_usd": micros_to_usd(r.refunded_before_micros),
        "fee_usd": micros_to_usd(r.fee_micros),
        "amount_usd": micros_to_usd(r.amount_micros),
        "payment_ref": r.payment_ref,
        "plan": r.plan,
        "reason": r.reason,
        "payout_id": r.payout_id,
        "requested_at": timestamp(r.requested_at),
        "updated_at": timestamp(r.updated_at),
    }


def refund_preview(q: RefundQuote) -> dict[str, Any]:
    """The refund as it stands, with the product page's table as `lines` (each line signed)."""
    table = [
        ("paid_total", q.paid_micros),
        ("usage", -q.usage_micros),
        ("refunded_before", -q.refunded_before_micros),
        ("refundable", q.refundable_micros),
        ("processor_fee", -q.fee_micros),
        ("refund", q.amount_micros),
    ]
    return {
        "eligible": q.eligible,
        "reason": q.reason,
        "payment_ref": q.payment_ref,
        "plan": q.plan,
        "paid_at": timestamp(q.paid_at),
        "refundable_until": timestamp(q.refundable_until),
        "paid_usd": micros_to_usd(q.paid_micros),
        "usage_usd": micros_to_usd(q.usage_micros),
        "refunded_before_usd": micros_to_usd(q.refunded_before_micros),
        "refundable_usd": micros_to_usd(q.refundable_micros),
        "fee_usd": micros_to_usd(q.fee_micros),
        "amount_usd": micros_to_usd(q.amount_micros),
        "pending_calls": q.pending_calls,
        "lines": [{"item": item, "usd": micros_to_usd(micros)} for item, micros in table],
    }


def account_abuse(a: AccountAbuse) -> dict[str, Any]:
    return {
        "account_id": a.account_id,
        "score": a.score,
        "signals": [
            {
                "kind": s.kind,
                "score": s.score,
                "summary": s.summary,
                "first_seen": timestamp(s.first_seen),
                "last_seen": timestamp(s.last_seen),
                "count": s.count,
                "accounts": s.accounts,
                "evidence": s.details,
            }
            for s in a.signals
        ],
    }
