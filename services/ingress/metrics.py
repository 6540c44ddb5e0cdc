"""ingress's metrics: names and labels are an API."""

from libs.observability import LATENCY_BUCKETS_S, meter

_meter = meter("ingress")

usage_events = _meter.create_counter(
    "flowplan_ingress_usage_events", description="usage records received, by outcome (accepted, duplicate)"
)
usage_rejected = _meter.create_counter(
    "flowplan_ingress_usage_rejected_batches", description="usage batches refused (none of it stored), by HTTP status"
)
publish_seconds = _meter.create_histogram(
    "flowplan_ingress_publish_seconds", unit="s", description="time until JetStream stored a batch",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)  # fmt: skip
