"""ingress's metrics: names and labels are an API."""

from libs.observability import Counter, Histogram

SCOPE = "ingress"

usage_events = Counter(
    SCOPE, "flowplan_ingress_usage_events", description="usage records received, by outcome (accepted, duplicate)"
)
usage_rejected = Counter(
    SCOPE,
    "flowplan_ingress_usage_rejected_batches",
    description="usage batches refused (none of it stored), by HTTP status",
)
publish_seconds = Histogram(
    SCOPE, "flowplan_ingress_publish_seconds", description="time until JetStream stored a batch"
)
