"""quota's metrics: names and labels are an API."""

from libs.observability import Counter, Histogram

SCOPE = "quota"

checks = Counter(
    SCOPE, "flowplan_quota_checks", description="quota.check answers by decision: admitted or the refusal's reason"
)
check_seconds = Histogram(SCOPE, "flowplan_quota_check_seconds", description="time to answer quota.check")
flows_consumed = Counter(
    SCOPE,
    "flowplan_flows_consumed",
    description="subscription Flows counted against the windows (gateway and metered usage, each event once), "
    "by model and the plan in force when the call happened",
)
