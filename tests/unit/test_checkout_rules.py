"""Checkout's pure parts: the webhook signature (Stripe's scheme) and what a checkout sells."""

import pytest

from libs import paymentwebhooks
from libs.pricing.catalog import load_catalog
from libs.web import ApiError
from services.ingress import checkout

BODY = b'{"id": "evt_1"}'


def test_a_signature_fits_its_body_secret_and_time_only() -> None:
    header = paymentwebhooks.sign("s", BODY, 1_000)
    paymentwebhooks.verify("s", BODY, header, now=1_000 + 300)
    for secret, body, now in [("x", BODY, 1_000), ("s", BODY + b" ", 1_000), ("s", BODY, 1_301), ("s", BODY, 699)]:
        with pytest.raises(paymentwebhooks.BadSignature):
            paymentwebhooks.verify(secret, body, header, now=now)
    with pytest.raises(paymentwebhooks.BadSignature):
        paymentwebhooks.verify("s", BODY, "v1=abc", now=1_000)


def test_a_checkout_sells_a_paid_plan_at_its_price_or_a_top_up_in_whole_cents() -> None:
    catalog = load_catalog("", "")
    pro = checkout.item(catalog, checkout.CheckoutIn(plan="pro"))
    assert (pro.kind, pro.plan, pro.amount_usd) == ("plan", "pro", "20.00")
    topup = checkout.item(catalog, checkout.CheckoutIn(topup_usd="12.5"))
    assert (topup.kind, topup.amount_usd) == ("topup", "12.50")
    for body, field in [(checkout.CheckoutIn(plan="free"), "plan"), (checkout.CheckoutIn(), "plan"),
                        (checkout.CheckoutIn(topup_usd="10001"), "topup_usd"),
                        (checkout.CheckoutIn(topup_usd="0.999"), "topup_usd")]:  # fmt: skip
        with pytest.raises(ApiError) as refused:
            checkout.item(catalog, body)
        assert refused.value.status == 400 and refused.value.field == field
