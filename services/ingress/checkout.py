"""Paying through the payment provider: what a checkout sells, the provider's side of it, and
what its signed webhook records.

A checkout is a plan's month at its price or a pay-as-you-go top-up. The provider hosts the page
(the local one is served by the simulator: the item, the amount, "Pay" and "Cancel"), and on
payment sends a signed webhook; ingress verifies it (libs/paymentwebhooks.py) and hands billing
the payment or top-up, with the provider's payment id as the reference, so a webhook delivered
twice is recorded once (billing refuses a reference it has seen).

A Stripe adapter is another CheckoutProvider: `create` makes a Checkout Session (mode=payment,
one line item, success/cancel URLs, the account and item in metadata), and its webhook
(`checkout.session.completed`, verified with Stripe's own `Stripe-Signature`, the same scheme)
maps to the same ProviderEvent; refunds already go through refund's PaymentProvider with the
refund id as idempotency key.
"""

from datetime import datetime
from fractions import Fraction
from typing import Annotated, Literal, Protocol

import aiohttp
import msgspec

from libs.pricing.catalog import Catalog
from libs.pricing.money import InvalidAmount, micros_to_str, parse_fraction, to_micros
from libs.web import ApiError
from proto.v1 import RecordPayment, TopUpBalance

MIN_TOPUP = Fraction(1)
MAX_TOPUP = Fraction(10_000)


class CheckoutIn(msgspec.Struct, forbid_unknown_fields=True):
    plan: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    topup_usd: Annotated[str, msgspec.Meta(max_length=40)] | float | int | None = None


class Item(msgspec.Struct, frozen=True, kw_only=True):
    kind: Literal["plan", "topup"]
    amount_usd: str
    plan: str | None = None
    description: str


def item(catalog: Catalog, body: CheckoutIn) -> Item:
    """What the checkout sells: one of `plan` (a paid plan's month, at its price) or `topup_usd`."""
    if (body.plan is None) == (body.topup_usd is None):
        raise ApiError(400, "invalid_request", "give either plan or topup_usd", "plan")
    if body.plan is not None:
        plan = catalog.plans.get(body.plan)
        if plan is None or Fraction(plan.price_usd) <= 0:
            raise ApiError(400, "invalid_request", "plan: not a paid plan (pro, max, ultra)", "plan")
        return Item(kind="plan", plan=plan.id, amount_usd=plan.price_usd, description=f"{plan.name} plan, one month")
    try:
        amount = parse_fraction(str(body.topup_usd))
    except InvalidAmount as exc:
        raise ApiError(400, "invalid_request", f"topup_usd: {exc}", "topup_usd") from exc
    if not MIN_TOPUP <= amount <= MAX_TOPUP or amount * 100 != int(amount * 100):
        raise ApiError(400, "invalid_request", "topup_usd: whole cents from 1.00 to 10000.00", "topup_usd")
    text = micros_to_str(int(amount * 1_000_000), 2)
    return Item(kind="topup", amount_usd=text, description=f"Pay-as-you-go top-up, ${text}")


class Session(msgspec.Struct, frozen=True):
    id: str
    url: str


class CheckoutProvider(Protocol):
    async def create(self, account_id: str, item: Item, success_url: str, cancel_url: str) -> Session: ...


class LocalCheckoutProvider:
    """The local provider's API, served by the simulator."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def create(self, account_id: str, item: Item, success_url: str, cancel_url: str) -> Session:
        body = {"account_id": account_id, **msgspec.to_builtins(item), "success_url": success_url,
                "cancel_url": cancel_url}  # fmt: skip
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.post(f"{self.base_url}/provider/v1/checkout/sessions", json=body) as response,
            ):
                response.raise_for_status()
                return msgspec.convert(await response.json(), Session)
        except (aiohttp.ClientError, TimeoutError, msgspec.ValidationError) as exc:
            raise ApiError(503, "payment_provider_unavailable", "the payment provider did not answer; retry") from exc


class Payment(msgspec.Struct, frozen=True, kw_only=True):
    account_id: str
    checkout_id: str
    payment_id: str
    kind: Literal["plan", "topup"]
    plan: str | None = None
    amount_usd: str
    paid_at: Annotated[datetime, msgspec.Meta(tz=True)]


class ProviderEvent(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: Literal["checkout.completed"]
    data: Payment


def command(event: ProviderEvent) -> RecordPayment | TopUpBalance:
    """What billing records for a completed checkout, referenced by the provider's payment id."""
    payment = event.data
    amount = to_micros(payment.amount_usd)
    if payment.kind == "plan":
        if payment.plan is None:
            raise ApiError(400, "invalid_request", "data.plan: required for a plan payment", "data.plan")
        return RecordPayment(account_id=payment.account_id, plan=payment.plan, amount_micros=amount,
                             payment_ref=payment.payment_id, paid_at=payment.paid_at)  # fmt: skip
    return TopUpBalance(account_id=payment.account_id, amount_micros=amount, topup_ref=payment.payment_id)
