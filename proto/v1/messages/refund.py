"""refund: previews, requests, cancels and the local payment provider's configuration."""

from datetime import datetime

import msgspec

from proto.v1.events import PlanId
from proto.v1.messages.common import (
    RefundRefusalCode,
    Text,
)


class RefundQuote(msgspec.Struct, frozen=True, kw_only=True):
    """The refund of the account's latest payment, line by line as it stands (micro-USD)."""

    eligible: bool
    reason: str | None = None
    """Why not: no_payment, free_plan, window_passed, usage_exceeds_payment, nothing_to_refund,
    already_refunded, refund_in_progress."""
    payment_ref: str | None = None
    plan: PlanId | None = None
    paid_at: datetime | None = None
    refundable_until: datetime | None = None
    paid_micros: int = 0
    usage_micros: int = 0
    refunded_before_micros: int = 0
    refundable_micros: int = 0
    fee_micros: int = 0
    amount_micros: int = 0
    pending_calls: int = 0
    """Calls admitted and still running: their usage will count too."""


class RefundView(msgspec.Struct, frozen=True, kw_only=True):
    refund_id: str
    account_id: str
    payment_ref: str
    plan: PlanId
    status: str
    """processing, succeeded, failed, cancelled."""
    requested_at: datetime
    updated_at: datetime
    paid_micros: int
    usage_micros: int
    refunded_before_micros: int
    fee_micros: int
    amount_micros: int
    reason: str | None = None
    payout_id: str | None = None


class PreviewRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class RequestRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class GetRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    refund_id: Text


class CancelRefund(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Call a processing refund off, if its payout has not started."""

    account_id: str
    refund_id: Text


class ListRefunds(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str


class RefundReply(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    refund: RefundView | None = None
    quote: RefundQuote | None = None
    refunds: list[RefundView] = []


class RefundRefused(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: RefundRefusalCode
    reason: str
    message: str


class ConfigurePayouts(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Tell the local payment provider to decline payouts (tests and demos) or to pay again."""

    fail_payouts: bool


class PayoutsConfigured(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    provider: str
    fail_payouts: bool
