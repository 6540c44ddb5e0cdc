"""billing: history, costs, abuse signals, payments and top-ups."""

from datetime import datetime
from typing import Annotated

import msgspec

from proto.v1.events import PlanId
from proto.v1.messages.common import (
    BillingRefusalCode,
    Text,
)


class BillingHistoryRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    limit: int = 100


class BillingEntry(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    kind: str
    """payment, plan_change, top_up, refund."""
    occurred_at: datetime
    amount_micros: int = 0
    plan: str | None = None
    previous_plan: str | None = None
    reference: str | None = None


class BillingHistory(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    entries: list[BillingEntry]
    balance_micros: int = 0
    """The PAYG ledger's sum."""


class CostsRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    group_by: str
    """model, day, or hour (the subscription's Flows per UTC hour)."""
    since: datetime
    until: datetime


class CostLine(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    """The model id, the UTC day (YYYY-MM-DD), or the UTC hour (RFC 3339)."""
    calls: int
    flows_micros: int
    usd_micros: int


class Costs(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    lines: list[CostLine]


class AbuseSignalsRequest(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    min_score: int = 1
    limit: int = 100


class AbuseSignal(msgspec.Struct, frozen=True, kw_only=True):
    """One signal of an account and the evidence behind it, for the operator to judge."""

    kind: str
    """shared_client_address, around_the_clock, keys_across_clients or identical_usage."""
    score: int
    summary: str
    first_seen: datetime
    last_seen: datetime
    count: int
    """Calls (or days, for around_the_clock) behind the signal."""
    accounts: list[str] = []
    """The other accounts it links this one to."""
    details: dict[str, str | list[str]] = {}


class AccountAbuse(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    score: int
    signals: list[AbuseSignal]


class AbuseSignals(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    accounts: list[AccountAbuse]


class RecordPayment(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Record a successful payment (what a payment provider's webhook delivers): it pays one
    month of a plan and starts or changes the subscription. billing decides when it takes effect."""

    account_id: str
    plan: PlanId
    amount_micros: int
    payment_ref: Text
    """The provider's reference: a payment sent again with the same one is recorded once."""
    paid_at: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    """When it was paid (with its UTC offset); None: now, by billing's clock."""
    override: bool = False
    """An amount other than the plan's price is recorded only when this says so (a back-office
    correction: a discount, a partial payment); otherwise it is refused, naming amount_usd."""


class PaymentAccepted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    payment_ref: str
    plan: PlanId
    previous_plan: PlanId
    amount_micros: int
    paid_at: datetime
    effective_at: datetime
    """When the plan takes effect: at once, or for a downgrade when the month already paid for ends."""
    paid_until: datetime
    duplicate: bool = False
    """The payment_ref was recorded before: this is that payment, nothing new was recorded."""
    seq: int = 0
    """The stream sequence of the last event recorded (0 for a duplicate): what a caller waits for
    quota to pass before it answers (libs/eventlog/barrier.py)."""


class TopUpBalance(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Credit the account's pay-as-you-go balance."""

    account_id: str
    amount_micros: int
    topup_ref: Text | None = None
    """Makes a top-up sent again the same one; None: a new top-up each time."""


class TopUpAccepted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account_id: str
    topup_ref: str
    amount_micros: int
    topped_up_at: datetime
    duplicate: bool = False
    """The topup_ref was recorded before: this is that top-up, nothing new was credited."""
    seq: int = 0
    """The stream sequence of the BalanceToppedUp (0 for a duplicate): what a caller waits for quota
    to pass before it answers (libs/eventlog/barrier.py)."""


class BillingCommandFailed(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    code: BillingRefusalCode
    """invalid_request (field names what), ref_conflict (the payment_ref or topup_ref was recorded
    with another plan or amount), unavailable (nothing was recorded; retry)."""
    message: str
    field: str | None = None
