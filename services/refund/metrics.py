"""refund's metrics (no per-account labels)."""

from libs.observability import meter

_meter = meter("refund")

refunds = _meter.create_counter(
    "flowplan_refunds", description="refunds by status: requested, succeeded, failed, cancelled"
)
refusals = _meter.create_counter("flowplan_refund_refusals", description="refund requests refused, by reason")
refunded_usd = _meter.create_counter("flowplan_refund_amount_usd", unit="USD", description="USD paid back")
fees_usd = _meter.create_counter("flowplan_refund_fee_usd", unit="USD", description="processor fees withheld")
