"""The one constructor of UsageRecorded: a metered call priced (flows.price_call) and stated as the
event, with the rate and multiplier it was priced at. Ingress (metering clients) and the gateway
(its own calls) both record usage through it, so the event's fields have one owner."""

from datetime import datetime
from fractions import Fraction
from typing import Literal

from libs.pricing.catalog import Model
from libs.pricing.flows import price_call
from libs.pricing.money import fraction_text
from proto.v1.events import BillingMode, UsageRecorded


def usage_recorded(
    model: Model,
    *,
    event_id: str,
    account_id: str,
    occurred_at: datetime,
    input_tokens: int,
    output_tokens: int,
    cached_tokens: int,
    images: int,
    billing_mode: BillingMode,
    key_id: str | None,
    usd_per_flow: Fraction,
    multiplier: Fraction,
    source: Literal["ingress", "gateway"],
    reservation_id: str | None = None,
    client_hash: str | None = None,
    agent_hash: str | None = None,
    conversation_id: str | None = None,
) -> UsageRecorded:
    price = price_call(
        model, input_tokens=input_tokens, output_tokens=output_tokens, cached_tokens=cached_tokens, images=images,
        usd_per_flow=usd_per_flow, multiplier=multiplier,
    )  # fmt: skip
    return UsageRecorded(
        event_id=event_id,
        account_id=account_id,
        occurred_at=occurred_at,
        model=model.id,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_tokens=cached_tokens,
        images=images,
        billing_mode=billing_mode,
        key_id=key_id,
        usd_cost_micros=price.usd_cost_micros,
        flows_micros=price.flows_micros,
        usd_per_flow=fraction_text(usd_per_flow),
        multiplier=fraction_text(multiplier),
        reservation_id=reservation_id,
        source=source,
        client_hash=client_hash,
        agent_hash=agent_hash,
        conversation_id=conversation_id,
    )
