"""Metrics through the OpenTelemetry SDK, exposed in Prometheus text format on /metrics.

Each service describes its instruments in its own metrics.py; names start with
`flowplan_` and never carry per-account labels (per-account data lives in Postgres).
"""

from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import REGISTRY, generate_latest

_provider: MeterProvider | None = None


def meter(service: str) -> metrics.Meter:
    """The service's meter; the first call installs the Prometheus reader for the process."""
    global _provider
    if _provider is None:
        _provider = MeterProvider(
            metric_readers=[PrometheusMetricReader()],
            resource=Resource.create({"service.name": f"flowplan-{service}"}),
        )
        metrics.set_meter_provider(_provider)
    return _provider.get_meter(f"flowplan.{service}")


def prometheus_text() -> bytes:
    return generate_latest(REGISTRY)
