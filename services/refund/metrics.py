"""refund's metrics (no per-account labels)."""

from libs.observability import Counter

SCOPE = "refund"

refunds = Counter(SCOPE, "flowplan_refunds", description="refunds by status: requested, succeeded, failed, cancelled")
refusals = Counter(SCOPE, "flowplan_refund_refusals", description="refund requests refused, by reason")
# No `unit`: the Prometheus exporter would append it (flowplan_refund_amount_usd_USD_total).
refunded_usd = Counter(SCOPE, "flowplan_refund_amount_usd", description="USD paid back")
fees_usd = Counter(SCOPE, "flowplan_refund_fee_usd", description="processor fees withheld")
