"""The refund rules, pure: who may have one, and how much.

The product page's table, in integer micro-USD:

    paid total                 (the refunded payment)
  − usage                      (equivalent API value of the subscription calls in the period it paid for;
                                PAYG calls were paid from the balance already)
  − refunded before            (earlier refunds of the same payment)
  = refundable                 (nothing to refund when ≤ 0)
  − processor fee (5%)
  = refund                     (paid back)

Rounding happens once, at the end: the refund is 95% of the refundable amount rounded
half-up to whole cents (and never more than the refundable amount); the fee is what is
left of the refundable amount, so the lines always add up to the micro-USD.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

from libs.pricing.catalog import FREE
from libs.pricing.money import round_half_up

REFUND_WINDOW = timedelta(hours=24)
FEE_RATE = Fraction(5, 100)
CENT = 10_000
"""One cent in micro-USD."""


@dataclass(frozen=True)
class Payment:
    payment_ref: str
    plan: str
    paid_at: datetime
    amount_micros: int


@dataclass(frozen=True)
class PlanSpan:
    effective_at: datetime
    plan: str
    paid_until: datetime | None


@dataclass(frozen=True)
class Period:
    """What a payment paid for: from when its plan took effect to its paid_until (None: open)."""

    start: datetime
    end: datetime | None


def payment_period(payment: Payment, change: PlanSpan | None) -> Period:
    """The period of the plan change the payment bought; from paid_at on, open-ended, for a payment
    whose change is not known (one recorded before plan changes named their payment)."""
    if change is None:
        return Period(payment.paid_at, None)
    return Period(change.effective_at, change.paid_until)


def not_started(change: PlanSpan | None, now: datetime) -> bool:
    """The payment's plan takes effect later (a scheduled downgrade): refunding it withdraws that
    change, and the plan in force now runs on instead of dropping to Free."""
    return change is not None and change.effective_at > now


@dataclass(frozen=True)
class Lines:
    paid: int
    usage: int
    refunded_before: int
    refundable: int
    fee: int
    amount: int


def lines(paid: int, usage: int, refunded_before: int) -> Lines:
    refundable = paid - usage - refunded_before
    if refundable <= 0:
        return Lines(paid, usage, refunded_before, refundable, 0, 0)
    amount = round_half_up(Fraction(refundable) * (1 - FEE_RATE) / CENT) * CENT
    amount = min(amount, refundable // CENT * CENT)  # tiny amounts must not round up past what is owed
    return Lines(paid, usage, refunded_before, refundable, refundable - amount, amount)


def refunded_before(refunds: Sequence[tuple[str, int]]) -> int:
    """What earlier refunds of a payment paid back: the succeeded ones' amounts."""
    return sum(amount for status, amount in refunds if status == "succeeded")


def plan_at(spans: Sequence[PlanSpan], when: datetime) -> str:
    """The plan in force: the latest change at or before `when`; Free before any and after an unpaid end."""
    current = max((s for s in spans if s.effective_at <= when), key=lambda s: s.effective_at, default=None)
    if current is None or (current.paid_until is not None and when >= current.paid_until):
        return FREE
    return current.plan


def refusal(
    payment: Payment | None,
    plan_now: str,
    refund_statuses: Sequence[str],
    result: Lines | None,
    now: datetime,
) -> str | None:
    """Why the latest payment can't be refunded now, or None when it can. In order of what the
    user can do about it: nothing to refund at all, then timing, then the amount."""
    if payment is None:
        return "free_plan"
    if "succeeded" in refund_statuses:
        return "already_refunded"
    if "processing" in refund_statuses:
        return "refund_in_progress"
    if plan_now == FREE:
        return "free_plan"
    if now > payment.paid_at + REFUND_WINDOW:
        return "window_passed"
    if result is not None and result.refundable <= 0:
        return "usage_exceeds_payment"
    if result is not None and result.amount <= 0:
        return "nothing_to_refund"
    return None


def cancel_refusal(status: str, payout_started: bool) -> str | None:
    """Why a refund can't be cancelled: it is settled already, or money is on its way."""
    if status != "processing":
        return f"already_{status}"
    if payout_started:
        return "payout_started"
    return None


MESSAGES = {
    "free_plan": "only a paid subscription (Pro, Max, Ultra) can be refunded",
    "already_refunded": "this payment has already been refunded",
    "refund_in_progress": "a refund of this payment is already being processed",
    "window_passed": "a refund must be asked for within 24 hours of the payment",
    "usage_exceeds_payment": "the API value used since the payment is not less than what was paid",
    "nothing_to_refund": "the refund after the processor fee is less than one cent",
    "already_succeeded": "the refund has been paid out already",
    "already_failed": "the refund has failed already; nothing to cancel",
    "already_cancelled": "the refund has been cancelled already",
    "payout_started": "the payout of the refund has started and can no longer be stopped",
}
