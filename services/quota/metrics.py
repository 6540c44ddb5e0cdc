"""quota's metrics: names and labels are an API."""

from libs.observability import meter

_meter = meter("quota")

checks = _meter.create_counter("flowplan_quota_checks", description="quota.check answers by decision")
check_seconds = _meter.create_histogram(
    "flowplan_quota_check_seconds", unit="s", description="time to answer quota.check"
)
events_applied = _meter.create_counter(
    "flowplan_projection_events_applied", description="events applied to a projection"
)
