"""The payment rules, pure: when a payment's plan takes effect, what a top-up credits, and the
events each produces. No I/O: billing's commands hand in the account's plan changes."""

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import NamedTuple

from libs.months import add_months
from libs.pricing.catalog import FREE
from libs.pricing.money import micros_to_usd
from libs.refusal import Refusal
from proto.v1 import BalanceToppedUp, InsiderStatusEnded, PaymentRecorded, PlanChanged, RecordPayment, TopUpBalance

_NAMESPACE = uuid.UUID("6f0c6f7e-3b9e-4a53-9a43-0f9b0d6a1c55")
"""The namespace ingress used when it decided payments: a request retried across the move is the same event."""


class Subscription(NamedTuple):
    """A plan change: the plan from effective_at on, paid up to paid_until (None: Free, no end)."""

    effective_at: datetime
    plan: str
    paid_until: datetime | None


def event_id(*parts: str) -> str:
    """A deterministic id, so that a retried command is the same event (deduplicated), not a new one."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def subscription_at(changes: Iterable[Subscription], when: datetime) -> Subscription | None:
    """The plan in force at `when`, or None for Free: before any payment, and after a paid
    month ended unrenewed. Changes at the same time are ordered by plan, as quota orders them."""
    current = max((s for s in changes if s.effective_at <= when), default=None)
    if current is None or (current.paid_until is not None and when >= current.paid_until):
        return None
    return current


def first_lapse(changes: Iterable[Subscription], since: datetime, until: datetime) -> datetime | None:
    """The first moment in [since, until] the account fell to Free: a paid month that ended
    unrenewed, or a change to Free (a refund). None while the paid subscription is unbroken."""
    changes = list(changes)
    moments = {c.paid_until for c in changes if c.paid_until is not None}
    moments |= {c.effective_at for c in changes if c.plan == FREE}
    for moment in sorted(m for m in moments if since <= m <= until):
        current = subscription_at(changes, moment)
        if current is None or current.plan == FREE:
            return moment
    return None


def insider_ended(
    account_id: str, status_id: str, marked_at: datetime, changes: Iterable[Subscription], now: datetime
) -> InsiderStatusEnded | None:
    """The end of an insider mark (InsiderStatusSet status_id, in force from marked_at) if the paid
    subscription lapsed to Free since, dated at the lapse. Its id is derived from the mark: deciding
    it again (a retry, a sweep and a payment at once) is the same event."""
    lapsed_at = first_lapse(changes, marked_at, now)
    if lapsed_at is None:
        return None
    return InsiderStatusEnded(
        event_id=event_id("insider-ended", account_id, status_id), account_id=account_id, occurred_at=lapsed_at,
        reason="lapsed_to_free", insider_status_id=status_id,
    )  # fmt: skip


def record_payment(
    command: RecordPayment,
    changes: Iterable[Subscription],
    prices: Mapping[str, int],
    now: datetime,
    created_at: datetime | None = None,
) -> tuple[PaymentRecorded, PlanChanged]:
    """A payment pays one month of a plan. An upgrade (or renewal, or any payment on Free or
    after the paid period ended) takes effect at once and its month counts from paid_at; a
    downgrade takes effect when the month already paid for ends, and its month counts from
    there: nobody loses what they paid for.

    A payment dated before the account existed (a back-office record or a backfill from another
    system) is decided as of the account's creation and takes effect from then, for what is left
    of its month, which still counts from paid_at (as does the refund window): a plan cannot be in
    force before its account, where quota could not see it, and a month that ended before the
    account began gives none."""
    if prices.get(command.plan, 0) == 0:
        paid = sorted(plan for plan, price in prices.items() if price > 0)
        raise Refusal("invalid_request", f"plan: must be one of {paid}", "plan")
    if command.amount_micros < 0:
        raise Refusal("invalid_request", "amount_usd: must not be negative", "amount_usd")
    price = prices[command.plan]
    if command.amount_micros != price and not command.override:
        raise Refusal(
            "invalid_request",
            f"amount_usd: {micros_to_usd(command.amount_micros)} is not the {command.plan} plan's price "
            f'({micros_to_usd(price)}); send "override": true to record another amount',
            "amount_usd",
        )
    paid_at = command.paid_at or now
    if paid_at > now:
        raise Refusal("invalid_request", "paid_at: must not be in the future", "paid_at")
    decided_at = paid_at if created_at is None else max(paid_at, created_at)
    current = subscription_at(changes, decided_at)
    previous = current.plan if current is not None else FREE
    anchor, paid_until = paid_at, add_months(paid_at, 1)
    starts = decided_at if decided_at < paid_until else paid_at  # a month over before the account began: as paid
    if current is not None and current.paid_until is not None and prices[command.plan] < prices.get(previous, 0):
        starts = anchor = current.paid_until  # in force at decided_at, so it ends after it
        paid_until = add_months(starts, 1)
    account_id, ref = command.account_id, command.payment_ref
    payment = PaymentRecorded(
        event_id=event_id("payment", account_id, ref), account_id=account_id, occurred_at=paid_at,
        payment_ref=ref, plan=command.plan, amount_micros=command.amount_micros,
    )  # fmt: skip
    change = PlanChanged(
        event_id=event_id("plan", account_id, ref), account_id=account_id, occurred_at=starts,
        plan=command.plan, previous_plan=previous, period_anchor=anchor, reason="payment",
        paid_until=paid_until, payment_ref=ref,
    )  # fmt: skip
    return payment, change


def top_up(command: TopUpBalance, now: datetime) -> BalanceToppedUp:
    """A credit to the PAYG balance; a topup_ref makes a retried command the same event."""
    if command.amount_micros <= 0:
        raise Refusal("invalid_request", "amount_usd: must be greater than zero", "amount_usd")
    ref = command.topup_ref or str(uuid.uuid4())
    return BalanceToppedUp(
        event_id=event_id("topup", command.account_id, ref), account_id=command.account_id, occurred_at=now,
        amount_micros=command.amount_micros, topup_ref=ref,
    )  # fmt: skip
