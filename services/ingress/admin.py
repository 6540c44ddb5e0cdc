"""Admin requests: decide which events an admin request produces, or which command it sends
(payments and top-ups are billing's to decide). Pure: no I/O."""

import secrets
import uuid
from datetime import datetime
from fractions import Fraction
from typing import Annotated

import msgspec

from libs.pricing.money import InvalidAmount, fraction_text, parse_fraction, to_micros
from libs.web import ApiError
from proto.v1 import (
    AccountCreated,
    ExtraUsageChanged,
    FlowRateChanged,
    MultiplierChanged,
    RecordPayment,
    TopUpBalance,
)

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Number = Annotated[str, msgspec.Meta(min_length=1, max_length=40)] | float | int
Aware = Annotated[datetime, msgspec.Meta(tz=True)]


Email = Annotated[str, msgspec.Meta(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")]


class CreateAccount(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    multiplier: Number = "1"
    email: Email | None = None


class SignInLinkIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email | None = None


class PaymentIn(msgspec.Struct, forbid_unknown_fields=True):
    plan: str
    amount_usd: Number
    payment_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    paid_at: Aware | None = None


class SetMultiplier(msgspec.Struct, forbid_unknown_fields=True):
    multiplier: Number
    effective_at: Aware | None = None


class TopUpIn(msgspec.Struct, forbid_unknown_fields=True):
    amount_usd: Number
    topup_ref: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class SetExtraUsage(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool
    payg_key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] | None = None


class SetFlowRate(msgspec.Struct, forbid_unknown_fields=True):
    usd_per_flow: Number
    effective_at: Aware | None = None


class Suspension(msgspec.Struct, forbid_unknown_fields=True):
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class PayoutSettings(msgspec.Struct, forbid_unknown_fields=True):
    fail_payouts: bool


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


def payment_command(account_id: str, body: PaymentIn) -> RecordPayment:
    """The payment for billing to decide: when it takes effect depends on the account's plan, which
    billing knows."""
    return RecordPayment(
        account_id=account_id, plan=body.plan, amount_micros=_micros(body.amount_usd, "amount_usd"),
        payment_ref=body.payment_ref, paid_at=body.paid_at,
    )  # fmt: skip


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


def top_up_command(account_id: str, body: TopUpIn) -> TopUpBalance:
    return TopUpBalance(
        account_id=account_id, amount_micros=_micros(body.amount_usd, "amount_usd"), topup_ref=body.topup_ref
    )


def _micros(value: str | float | int, field: str) -> int:
    try:
        return to_micros(str(value))
    except InvalidAmount as exc:
        raise ApiError(400, "invalid_request", f"{field}: {exc}", field) from exc


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
