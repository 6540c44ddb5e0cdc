"""Admin commands: decide which events an admin request produces. Pure: no I/O."""

import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime
from fractions import Fraction
from typing import Annotated

import msgspec

from libs.months import add_months
from libs.pricing.money import InvalidAmount, fraction_text, parse_fraction, to_micros
from libs.web import ApiError
from proto.v1 import (
    AccountCreated,
    BalanceToppedUp,
    ExtraUsageChanged,
    FlowRateChanged,
    MultiplierChanged,
    PaymentRecorded,
    PlanChanged,
)
from services.ingress.directory import Subscription

_NAMESPACE = uuid.UUID("6f0c6f7e-3b9e-4a53-9a43-0f9b0d6a1c55")
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Number = Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | float | int
Aware = Annotated[datetime, msgspec.Meta(tz=True)]


class CreateAccount(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    multiplier: Number = "1"


class RecordPayment(msgspec.Struct, forbid_unknown_fields=True):
    plan: str
    amount_usd: Number
    payment_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    paid_at: Aware | None = None


class SetMultiplier(msgspec.Struct, forbid_unknown_fields=True):
    multiplier: Number
    effective_at: Aware | None = None


class TopUp(msgspec.Struct, forbid_unknown_fields=True):
    amount_usd: Number
    topup_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class SetExtraUsage(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool
    payg_key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class SetFlowRate(msgspec.Struct, forbid_unknown_fields=True):
    usd_per_flow: Number
    effective_at: Aware | None = None


class PayoutSettings(msgspec.Struct, forbid_unknown_fields=True):
    fail_payouts: bool


def event_id(*parts: str) -> str:
    """A deterministic id, so that a retried admin request is the same event (deduped), not a new one."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


def positive(value: str | float | int, field: str) -> Fraction:
    try:
        number = parse_fraction(str(value))
    except InvalidAmount as exc:
        raise ApiError(400, "invalid_request", f"{field}: {exc}", field) from exc
    if number <= 0:
        raise ApiError(400, "invalid_request", f"{field}: must be greater than zero", field)
    return number


def create_account(command: CreateAccount, now: datetime) -> AccountCreated:
    multiplier = positive(command.multiplier, "multiplier")
    return AccountCreated(
        event_id=str(uuid.uuid4()), account_id=f"acc_{secrets.token_hex(8)}", occurred_at=now,
        name=command.name, multiplier=fraction_text(multiplier),
    )  # fmt: skip


def record_payment(
    account_id: str,
    current: Subscription,
    command: RecordPayment,
    prices: Mapping[str, int],
    now: datetime,
) -> tuple[PaymentRecorded, PlanChanged]:
    """A payment pays one month of a plan. An upgrade (or renewal, or any payment on Free or
    after the paid period ended) takes effect at once and its month counts from paid_at; a
    downgrade takes effect when the month already paid for ends, and its month counts from
    there: nobody loses what they paid for."""
    if command.plan not in prices or prices[command.plan] == 0:
        paid = sorted(plan for plan, price in prices.items() if price > 0)
        raise ApiError(400, "invalid_request", f"plan: must be one of {paid}", "plan")
    try:
        amount = to_micros(str(command.amount_usd))
    except InvalidAmount as exc:
        raise ApiError(400, "invalid_request", f"amount_usd: {exc}", "amount_usd") from exc
    if amount < 0:
        raise ApiError(400, "invalid_request", "amount_usd: must not be negative", "amount_usd")
    paid_at = command.paid_at or now
    if paid_at > now:
        raise ApiError(400, "invalid_request", "paid_at: must not be in the future", "paid_at")
    starts = paid_at
    downgrade = prices[command.plan] < prices.get(current.plan, 0)
    if downgrade and current.paid_until is not None and current.paid_until > paid_at:
        starts = current.paid_until
    payment = PaymentRecorded(
        event_id=event_id("payment", account_id, command.payment_ref), account_id=account_id, occurred_at=paid_at,
        payment_ref=command.payment_ref, plan=command.plan, amount_micros=amount,
    )  # fmt: skip
    change = PlanChanged(
        event_id=event_id("plan", account_id, command.payment_ref), account_id=account_id, occurred_at=starts,
        plan=command.plan, previous_plan=current.plan, period_anchor=starts, reason="payment",
        paid_until=add_months(starts, 1),
    )  # fmt: skip
    return payment, change


def set_multiplier(account_id: str, command: SetMultiplier, now: datetime) -> MultiplierChanged:
    value = positive(command.multiplier, "multiplier")
    return MultiplierChanged(
        event_id=str(uuid.uuid4()),
        account_id=account_id,
        occurred_at=command.effective_at or now,
        multiplier=fraction_text(value),
    )


def set_flow_rate(command: SetFlowRate, now: datetime) -> FlowRateChanged:
    value = positive(command.usd_per_flow, "usd_per_flow")
    return FlowRateChanged(
        event_id=str(uuid.uuid4()), occurred_at=command.effective_at or now, usd_per_flow=fraction_text(value)
    )


def top_up(account_id: str, command: TopUp, now: datetime) -> BalanceToppedUp:
    """A credit to the PAYG balance; a topup_ref makes a retried request the same event."""
    try:
        amount = to_micros(str(command.amount_usd))
    except InvalidAmount as exc:
        raise ApiError(400, "invalid_request", f"amount_usd: {exc}", "amount_usd") from exc
    if amount <= 0:
        raise ApiError(400, "invalid_request", "amount_usd: must be greater than zero", "amount_usd")
    ref = command.topup_ref or str(uuid.uuid4())
    return BalanceToppedUp(
        event_id=event_id("topup", account_id, ref), account_id=account_id, occurred_at=now,
        amount_micros=amount, topup_ref=ref,
    )  # fmt: skip


def set_extra_usage(
    account_id: str, command: SetExtraUsage, payg_key_ids: set[str], now: datetime
) -> ExtraUsageChanged:
    """Extra Usage needs one of the account's own active PAYG keys to bill to."""
    if command.enabled and command.payg_key_id is None:
        raise ApiError(400, "invalid_request", "payg_key_id: required to enable Extra Usage", "payg_key_id")
    if command.payg_key_id is not None and command.payg_key_id not in payg_key_ids:
        raise ApiError(
            400, "invalid_request", "payg_key_id: not an active pay-as-you-go key of this account", "payg_key_id"
        )
    return ExtraUsageChanged(
        event_id=str(uuid.uuid4()), account_id=account_id, occurred_at=now, enabled=command.enabled,
        payg_key_id=command.payg_key_id,
    )  # fmt: skip
