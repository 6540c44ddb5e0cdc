"""The simulator's metrics: what the gateway sent upstream, to compare with its own counts."""

from libs.observability import meter

_meter = meter("simulator")

requests = _meter.create_counter("flowplan_simulator_requests", description="requests served, by route and status")
