"""Admin requests: decide which events an admin request produces, or which command it sends
(payments and top-ups are billing's to decide). Pure: no I/O."""

import secrets
import uuid
from datetime import datetime
from fractions import Fraction
from typing import Annotated

import msgspec

from libs.pricing.money import InvalidAmount, fraction_text, parse_fraction, to_micros
from libs.web import CONTROL, ApiError
from proto.v1 import (
    AccountCreated,
    ExtraUsageChanged,
    FlowRateChanged,
    InsiderStatusSet,
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
    override: bool = False
    """Needed to record an amount other than the plan's price (billing checks it)."""


class SetMultiplier(msgspec.Struct, forbid_unknown_fields=True):
    multiplier: Number
    effective_at: Aware | None = None


class SetInsider(msgspec.Struct, forbid_unknown_fields=True):
    insider: bool
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


MULTIPLIERS = (Fraction(1, 100), Fraction(100))
FLOW_RATES = (Fraction(1, 10**4), Fraction(1000))
"""USD per Flow. With the multipliers' bounds, no call a usage record can describe prices past
what Postgres's bigint holds (usage.MAX_CALL_MICROS refuses the rest)."""
MAX_AMOUNT_MICROS = 10**12
"""One payment or top-up: at most a million USD, so that balances and sums stay far inside a bigint."""


def positive(value: str | float | int, field: str, bounds: tuple[Fraction, Fraction] | None = None) -> Fraction:
    try:
        number = parse_fraction(str(value))
    except InvalidAmount as exc:
        raise ApiError(400, "invalid_request", f"{field}: {exc}", field) from exc
    if number <= 0:
        raise ApiError(400, "invalid_request", f"{field}: must be greater than zero", field)
    if bounds is not None and not bounds[0] <= number <= bounds[1]:
        low, high = (float(b) for b in bounds)
        raise ApiError(400, "invalid_request", f"{field}: must lie between {low:g} and {high:g}", field)
    return number


def create_account(command: CreateAccount, now: datetime) -> AccountCreated:
    multiplier = positive(command.multiplier, "multiplier", MULTIPLIERS)
    return AccountCreated(
        event_id=str(uuid.uuid4()), account_id=f"acc_{secrets.token_hex(8)}", occurred_at=now,
        name=command.name, multiplier=fraction_text(multiplier),
    )  # fmt: skip


def payment_command(account_id: str, body: PaymentIn) -> RecordPayment:
    """The payment for billing to decide: when it takes effect depends on the account's plan, which
    billing knows."""
    return RecordPayment(
        account_id=account_id, plan=body.plan, amount_micros=_micros(body.amount_usd, "amount_usd"),
        payment_ref=body.payment_ref, paid_at=body.paid_at, override=body.override,
    )  # fmt: skip


def set_multiplier(account_id: str, command: SetMultiplier, now: datetime) -> MultiplierChanged:
    value = positive(command.multiplier, "multiplier", MULTIPLIERS)
    return MultiplierChanged(
        event_id=str(uuid.uuid4()),
        account_id=account_id,
        occurred_at=command.effective_at or now,
        multiplier=fraction_text(value),
    )


def set_insider(account_id: str, command: SetInsider, now: datetime) -> InsiderStatusSet:
    return InsiderStatusSet(
        event_id=str(uuid.uuid4()), account_id=account_id, occurred_at=command.effective_at or now,
        insider=command.insider,
    )  # fmt: skip


def set_flow_rate(command: SetFlowRate, now: datetime) -> FlowRateChanged:
    value = positive(command.usd_per_flow, "usd_per_flow", FLOW_RATES)
    return FlowRateChanged(
        event_id=str(uuid.uuid4()), occurred_at=command.effective_at or now, usd_per_flow=fraction_text(value)
    )


def top_up_command(account_id: str, body: TopUpIn, idempotency_key: str | None = None) -> TopUpBalance:
    """A top-up without a topup_ref takes the request's Idempotency-Key as its ref, so that a retry
    (after a 503, a timeout) is the same top-up: credited once."""
    ref = body.topup_ref
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 200 or CONTROL.search(idempotency_key):
            message = "Idempotency-Key: 1 to 200 characters, no control characters"
            raise ApiError(400, "invalid_request", message, "Idempotency-Key")
        if ref is not None and ref != idempotency_key:
            message = "Idempotency-Key: differs from topup_ref; send one of them, or both the same"
            raise ApiError(400, "invalid_request", message, "Idempotency-Key")
        ref = idempotency_key
    return TopUpBalance(account_id=account_id, amount_micros=_micros(body.amount_usd, "amount_usd"), topup_ref=ref)


def _micros(value: str | float | int, field: str) -> int:
    try:
        micros = to_micros(str(value))
    except InvalidAmount as exc:
        raise ApiError(400, "invalid_request", f"{field}: {exc}", field) from exc
    if abs(micros) > MAX_AMOUNT_MICROS:
        raise ApiError(400, "invalid_request", f"{field}: at most {MAX_AMOUNT_MICROS // 10**6:,} USD", field)
    return micros


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
