"""The one UsageRecorded constructor (libs/pricing/usage.py) that ingress and the gateway share."""

from datetime import UTC, datetime
from fractions import Fraction

from libs.pricing.catalog import load_catalog
from libs.pricing.flows import price_call
from libs.pricing.money import fraction_text, parse_fraction
from libs.pricing.usage import usage_recorded

CATALOG = load_catalog()
AT = datetime(2026, 3, 2, tzinfo=UTC)


def test_the_event_carries_the_price_and_the_rate_and_multiplier_it_was_priced_at() -> None:
    model = CATALOG.models["deepseek/deepseek-chat"]
    rate, multiplier = Fraction(5, 198), Fraction(5, 4)
    event = usage_recorded(
        model, event_id="e", account_id="a", occurred_at=AT, input_tokens=1200, output_tokens=300, cached_tokens=100,
        images=0, billing_mode="payg", key_id="k", usd_per_flow=rate, multiplier=multiplier, source="gateway",
        reservation_id="r", client_hash="c", agent_hash="g",
    )  # fmt: skip
    price = price_call(model, input_tokens=1200, output_tokens=300, cached_tokens=100, images=0,
                       usd_per_flow=rate, multiplier=multiplier)  # fmt: skip
    assert (event.usd_cost_micros, event.flows_micros) == price
    assert (event.usd_per_flow, event.multiplier) == ("5/198", "5/4")
    assert (event.model, event.billing_mode, event.source, event.reservation_id) == (model.id, "payg", "gateway", "r")
    assert (event.client_hash, event.agent_hash, event.key_id) == ("c", "g", "k")


def test_the_gateway_keeps_quotas_rate_text_as_it_was_decided() -> None:
    """The gateway parses quota's decision and the event states it again: the same text."""
    for text in ("5/198", "1", "1/40", "3/2"):
        assert fraction_text(parse_fraction(text)) == text
