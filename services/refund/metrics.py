"""refund's metrics (no per-account labels)."""

from libs.observability import meter

_meter = meter("refund")

refunds = _meter.create_counter(
    "flowplan_refunds", description="refunds by status: requested, succeeded, failed, cancelled"
)
refusals = _meter.create_counter("flowplan_refund_refusals", description="refund requests refused, by reason")
# No `unit`: the Prometheus exporter would append it (flowplan_refund_amount_usd_USD_total).
refunded_usd = _meter.create_counter("flowplan_refund_amount_usd", description="USD paid back")
fees_usd = _meter.create_counter("flowplan_refund_fee_usd", description="processor fees withheld")
