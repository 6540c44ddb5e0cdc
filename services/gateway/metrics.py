"""gateway's metrics: names and labels are an API (no per-account labels)."""

from libs.observability import meter

_meter = meter("gateway")

calls = _meter.create_counter("flowplan_gateway_calls", description="calls by route, model, plan and status")
admission_seconds = _meter.create_histogram(
    "flowplan_gateway_admission_seconds", unit="s", description="key lookup + quota.check time per call"
)
refusals = _meter.create_counter("flowplan_gateway_refusals", description="calls refused, by reason")
flows = _meter.create_counter("flowplan_gateway_flows", unit="Flow", description="Flows consumed, by model and plan")
