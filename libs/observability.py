"""Metrics through the OpenTelemetry SDK, exposed in Prometheus text format on /metrics.

Each service describes its instruments in its own metrics.py; names start with
`flowplan_` and never carry per-account labels (per-account data lives in Postgres).
Instruments are created at import through the API's global meter provider, which
forwards to the SDK once the process calls `install` with its service name: shared
code (the event log's metrics) may be imported before the service's own, and the
process is still labelled with the service it is.
"""

from collections.abc import Sequence

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, generate_latest

LATENCY_BUCKETS_S: Sequence[float] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Histogram bounds for request latencies in seconds (the SDK's default bounds suit milliseconds)."""

_installed = False


def install(service: str) -> None:
    """Send every flowplan instrument of this process to /metrics; the first call wins."""
    global _installed
    if not _installed:
        _installed = True
        provider = MeterProvider(
            metric_readers=[PrometheusMetricReader()],
            resource=Resource.create({"service.name": f"flowplan-{service}"}),
        )
        metrics.set_meter_provider(provider)


def meter(scope: str) -> metrics.Meter:
    return metrics.get_meter(f"flowplan.{scope}")


def prometheus_text() -> bytes:
    return generate_latest(REGISTRY)
