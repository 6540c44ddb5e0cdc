"""The simulator's metrics: what the gateway sent upstream, to compare with its own counts."""

from libs.observability import Counter

SCOPE = "simulator"

requests = Counter(SCOPE, "flowplan_simulator_requests", description="requests served, by route and status")
