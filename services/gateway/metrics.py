"""gateway's metrics: names and labels are an API (no per-account labels)."""

from libs.observability import LATENCY_BUCKETS_S, meter

_meter = meter("gateway")

calls = _meter.create_counter(
    "flowplan_gateway_calls", description="model calls by route, model, plan and HTTP status, refused ones included"
)
admission_seconds = _meter.create_histogram(
    "flowplan_gateway_admission_seconds", unit="s", description="key lookup + quota.check time per call",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)  # fmt: skip
refusals = _meter.create_counter("flowplan_gateway_refusals", description="calls refused, by reason")
flows = _meter.create_counter("flowplan_gateway_flows", description="Flows the gateway's calls cost, by model and plan")
