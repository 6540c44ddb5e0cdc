"""The payment rules, pure: when a payment's plan takes effect, what a top-up credits, and the
events each produces. No I/O: billing's commands hand in the account's plan changes."""

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import NamedTuple

from libs.months import add_months
from proto.v1 import BalanceToppedUp, PaymentRecorded, PlanChanged, RecordPayment, TopUpBalance

_NAMESPACE = uuid.UUID("6f0c6f7e-3b9e-4a53-9a43-0f9b0d6a1c55")
"""The namespace ingress used when it decided payments: a request retried across the move is the same event."""


class Refused(Exception):
    """The command is not carried out; nothing is recorded. `field` names what is wrong."""

    def __init__(self, message: str, field: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message, self.field, self.code = message, field, code


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


def record_payment(
    command: RecordPayment, changes: Iterable[Subscription], prices: Mapping[str, int], now: datetime
) -> tuple[PaymentRecorded, PlanChanged]:
    """A payment pays one month of a plan. An upgrade (or renewal, or any payment on Free or
    after the paid period ended) takes effect at once and its month counts from paid_at; a
    downgrade takes effect when the month already paid for ends, and its month counts from
    there: nobody loses what they paid for."""
    if prices.get(command.plan, 0) == 0:
        paid = sorted(plan for plan, price in prices.items() if price > 0)
        raise Refused(f"plan: must be one of {paid}", "plan")
    if command.amount_micros < 0:
        raise Refused("amount_usd: must not be negative", "amount_usd")
    paid_at = command.paid_at or now
    if paid_at > now:
        raise Refused("paid_at: must not be in the future", "paid_at")
    current = subscription_at(changes, paid_at)
    previous = current.plan if current is not None else "free"
    starts = paid_at
    if current is not None and current.paid_until is not None and prices[command.plan] < prices.get(previous, 0):
        starts = current.paid_until  # in force at paid_at, so it ends after it
    account_id, ref = command.account_id, command.payment_ref
    payment = PaymentRecorded(
        event_id=event_id("payment", account_id, ref), account_id=account_id, occurred_at=paid_at,
        payment_ref=ref, plan=command.plan, amount_micros=command.amount_micros,
    )  # fmt: skip
    change = PlanChanged(
        event_id=event_id("plan", account_id, ref), account_id=account_id, occurred_at=starts,
        plan=command.plan, previous_plan=previous, period_anchor=starts, reason="payment",
        paid_until=add_months(starts, 1),
    )  # fmt: skip
    return payment, change


def top_up(command: TopUpBalance, now: datetime) -> BalanceToppedUp:
    """A credit to the PAYG balance; a topup_ref makes a retried command the same event."""
    if command.amount_micros <= 0:
        raise Refused("amount_usd: must be greater than zero", "amount_usd")
    ref = command.topup_ref or str(uuid.uuid4())
    return BalanceToppedUp(
        event_id=event_id("topup", command.account_id, ref), account_id=command.account_id, occurred_at=now,
        amount_micros=command.amount_micros, topup_ref=ref,
    )  # fmt: skip
