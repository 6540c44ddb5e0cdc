"""Traces through the OpenTelemetry SDK: one trace from an HTTP request through the NATS
messages it causes to the Postgres transactions that apply them.

The W3C `traceparent` travels in NATS message headers, on events published to the log and
on request/reply calls. A service traces only when something receives its spans: it exports
over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is
set; otherwise its tracer is None and it makes no spans and sends no trace headers. The SDK
reads the other OTEL_* settings itself (OTEL_TRACES_SAMPLER, OTEL_BSP_*, exporter headers
and timeout, OTEL_RESOURCE_ATTRIBUTES).
"""

import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from aiohttp import web
from aiohttp.typedefs import Handler as HttpHandler
from aiohttp.typedefs import Middleware
from nats.aio.msg import Msg
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from libs.eventlog.subjects import event_type_of

TRACEPARENT = "traceparent"
OPS_PATHS = frozenset({"/healthz", "/metrics"})
"""Scraped and probed every few seconds: spans of them would bury the real traffic."""
NATS = {"messaging.system": "nats"}

_providers: dict[str, TracerProvider] = {}
_w3c = TraceContextTextMapPropagator()
_consumed: ContextVar[tuple[Tracer, list[Span]] | None] = ContextVar("flowplan_consumed", default=None)
MsgHandler = Callable[[Msg], Awaitable[None]]


def _exporting() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def provider(service: str) -> TracerProvider:
    """The service's provider, made on first use: one per process, except in tests that run
    several services in one process (each keeps its own service.name)."""
    if service not in _providers:
        made = TracerProvider(resource=Resource.create({SERVICE_NAME: f"flowplan-{service}"}))
        if _exporting():
            # Imported only here: it brings protobuf and requests into the processes that export.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            made.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _providers[service] = made
    return _providers[service]


def tracer(service: str) -> Tracer | None:
    """The service's tracer, or None when nothing would receive its spans (no OTLP endpoint and
    no provider installed by a test): then tracing costs a None check per batch or request."""
    if service not in _providers and not _exporting():
        return None
    return provider(service).get_tracer(f"flowplan.{service}")


def nats_headers() -> dict[str, str] | None:
    """Headers carrying the current span to a NATS request, or None outside a trace."""
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    headers: dict[str, str] = {}
    _w3c.inject(headers)
    return headers


def incoming(headers: dict[str, str] | None) -> context.Context | None:
    """The trace context a NATS message carries, or None (no traceparent, or an invalid one)."""
    if not headers or TRACEPARENT not in headers:
        return None
    carried = _w3c.extract(headers)
    return carried if trace.get_current_span(carried).get_span_context().is_valid else None


def _sampled(traceparent: str) -> bool:
    """Read from the flags (characters 53-54 in every version) without parsing the rest: this
    runs on the projection's hot path for every message that carries a traceparent."""
    try:
        return bool(int(traceparent[53:55], 16) & 1)
    except ValueError:
        return False


def http_middleware(tracer: Tracer) -> Middleware:
    """A server span per request, continuing the caller's traceparent, named by route
    (`POST /v1/keys/{id}/rotate`), never by raw path. No headers are recorded: they hold keys."""

    @web.middleware
    async def trace_request(request: web.Request, handler: HttpHandler) -> web.StreamResponse:
        if request.path in OPS_PATHS:
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        attributes = {"http.request.method": request.method, **({"http.route": route} if route else {})}
        with tracer.start_as_current_span(
            f"{request.method} {route}" if route else request.method, propagate.extract(request.headers),
            kind=SpanKind.SERVER, attributes=attributes, record_exception=False, set_status_on_exception=False,
        ) as span:  # fmt: skip
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                _http_status(span, exc.status)
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR)
                raise
            _http_status(span, response.status)
            return response

    return trace_request


def _http_status(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


def answering(tracer: Tracer | None, subject: str, handler: MsgHandler) -> MsgHandler:
    """The responder's handler, run in a server span when the request carries a trace context."""
    if tracer is None:
        return handler

    async def answer(msg: Msg) -> None:
        parent = incoming(msg.headers)
        if parent is None:
            return await handler(msg)
        attributes = {**NATS, "messaging.destination.name": subject}
        with tracer.start_as_current_span(subject, parent, kind=SpanKind.SERVER, attributes=attributes):
            await handler(msg)

    return answer


@contextmanager
def serving(tracer: Tracer | None, subject: str, traceparent: str | None) -> Iterator[None]:
    """One request of a batch (quota.check_batch's checks), in a server span of `subject` under
    its own carried traceparent, as `answering` runs a request that came alone."""
    parent = incoming({TRACEPARENT: traceparent}) if tracer is not None and traceparent else None
    if parent is None or tracer is None:
        yield
        return
    attributes = {**NATS, "messaging.destination.name": subject}
    with tracer.start_as_current_span(subject, parent, kind=SpanKind.SERVER, attributes=attributes):
        yield


@contextmanager
def publishing(
    tracer: Tracer | None, event_types: Sequence[str], parents: Sequence[context.Context] | None
) -> Iterator[list[str | None] | None]:
    """Producer spans for one publish of events, ended once the log has stored them: one span per
    parent context (each event's own from `parents`, else the current one for all). Yields each
    event's traceparent (None: not traced), or None when no event is. Only sampled contexts go
    into the log: it keeps every event's headers for good, and an unsampled one is of no use."""
    if tracer is None:
        yield None
        return
    spans: dict[int, tuple[Span, str]] = {}
    if parents is None:
        traceparents = [_producer(tracer, event_types[0], None, spans)] * len(event_types)
    else:
        traceparents = [_producer(tracer, t, parent, spans) for t, parent in zip(event_types, parents, strict=True)]
    with _ending([span for span, _ in spans.values()]):
        yield traceparents if spans else None


def _producer(
    tracer: Tracer, event_type: str, parent: context.Context | None, spans: dict[int, tuple[Span, str]]
) -> str | None:
    """The traceparent of the publish span under `parent`, started for the first event under it."""
    parent_span = trace.get_current_span(parent).get_span_context()
    if not (parent_span.is_valid and parent_span.trace_flags.sampled):
        return None
    if parent_span.span_id not in spans:
        span = tracer.start_span(f"publish {event_type}", parent, kind=SpanKind.PRODUCER, attributes=NATS)
        carrier: dict[str, str] = {}
        _w3c.inject(carrier, trace.set_span_in_context(span))
        spans[parent_span.span_id] = (span, carrier[TRACEPARENT])
    return spans[parent_span.span_id][1]


@contextmanager
def consuming(
    tracer: Tracer | None, projection: str, event_types: Sequence[str], msgs: Sequence[Msg]
) -> Iterator[None]:
    """Consume spans for the messages of a projection batch that carry a sampled trace context
    (and are of a type the projection applies): one per context, child of it, counting its
    messages (a 1,000-event ingest publishes them all under one span). Messages without one
    cost a header lookup; with tracing off, nothing per message."""
    if tracer is None:
        yield
        return
    by_parent: dict[str, Span] = {}
    counts: Counter[str] = Counter()
    for msg in msgs:
        traceparent = msg.headers.get(TRACEPARENT) if msg.headers else None
        if traceparent is None or not _sampled(traceparent):
            continue
        event_type = event_type_of(msg.subject)
        if event_type not in event_types:
            continue
        if traceparent not in by_parent:
            if (parent := incoming(msg.headers)) is None:
                continue
            attributes = {**NATS, "flowplan.projection": projection}
            by_parent[traceparent] = tracer.start_span(
                f"consume {event_type}", parent, kind=SpanKind.CONSUMER, attributes=attributes
            )
        counts[traceparent] += 1
    for traceparent, span in by_parent.items():
        span.set_attribute("messaging.batch.message_count", counts[traceparent])
    spans = list(by_parent.values())
    if not spans:
        yield
        return
    token = _consumed.set((tracer, spans))
    try:
        with _ending(spans):
            yield
    finally:
        _consumed.reset(token)


@contextmanager
def writing(schema: str, events: int) -> Iterator[None]:
    """The Postgres transaction that applies a batch, as a span under each consume span of the
    batch (inside `consuming`). One transaction serves many traces and a span has one parent, so
    each trace gets its own span of the same transaction; `flowplan.batch_size` says how many
    events it applied."""
    consumed = _consumed.get()
    if consumed is None:
        yield
        return
    tracer, parents = consumed
    attributes: Attributes = {"db.system.name": "postgresql", "flowplan.schema": schema, "flowplan.batch_size": events}
    with _ending(
        [
            tracer.start_span(
                f"write {schema}", trace.set_span_in_context(parent), kind=SpanKind.CLIENT, attributes=attributes
            )
            for parent in parents
        ]
    ):
        yield


@contextmanager
def _ending(spans: list[Span]) -> Iterator[None]:
    """End the spans when the block does; an error escaping it marks every one of them."""
    try:
        yield
    except BaseException as exc:
        for span in spans:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR)
        raise
    finally:
        for span in spans:
            span.end()
