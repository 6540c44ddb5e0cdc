"""quota's metrics: names and labels are an API."""

from libs.observability import LATENCY_BUCKETS_S, meter

_meter = meter("quota")

checks = _meter.create_counter(
    "flowplan_quota_checks", description="quota.check answers by decision: admitted or the refusal's reason"
)
check_seconds = _meter.create_histogram(
    "flowplan_quota_check_seconds", unit="s", description="time to answer quota.check",
    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
)  # fmt: skip
flows_consumed = _meter.create_counter(
    "flowplan_flows_consumed",
    description="subscription Flows counted against the windows (gateway and metered usage, each event once), "
    "by model and the plan in force when the call happened",
)
