"""gateway's metrics: names and labels are an API (no per-account labels)."""

from libs.observability import Counter, Histogram

SCOPE = "gateway"

calls = Counter(
    SCOPE,
    "flowplan_gateway_calls",
    description="model calls by route, model, plan and HTTP status, refused ones included",
)
admission_seconds = Histogram(
    SCOPE, "flowplan_gateway_admission_seconds", description="key lookup + quota.check time per call"
)
refusals = Counter(SCOPE, "flowplan_gateway_refusals", description="calls refused, by reason")
flows = Counter(SCOPE, "flowplan_gateway_flows", description="Flows the gateway's calls cost, by model and plan")
quota_check_batch = Histogram(
    SCOPE, "flowplan_gateway_quota_check_batch", bounds=(1, 2, 4, 8, 16, 32, 64),
    description="quota.checks per message sent to quota: 1 alone, more when coalesced under load",
)  # fmt: skip
