"""Tracing without servers: the HTTP middleware, the NATS headers, and when a service traces at all."""

import asyncio
from collections.abc import Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from libs import tracing

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
SECRET = "sk-ss-v1-" + "x" * 40


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


def tracer_to(exporter: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test")


async def test_an_incoming_traceparent_is_continued_and_the_span_is_named_by_route(
    exporter: InMemorySpanExporter,
) -> None:
    async def rotate(request: web.Request) -> web.Response:
        return web.json_response({"headers": tracing.nats_headers()}, status=201)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[tracing.http_middleware(tracer_to(exporter))])
    app.router.add_post("/v1/keys/{id}/rotate", rotate)
    app.router.add_get("/healthz", healthz)
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/v1/keys/key_123/rotate",
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "Authorization": f"Bearer {SECRET}"},
        )
        assert response.status == 201
        sent_on = (await response.json())["headers"]
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/nowhere")).status == 404

    rotated, missing = exporter.get_finished_spans()  # /healthz is not traced
    assert rotated.name == "POST /v1/keys/{id}/rotate" and rotated.kind == SpanKind.SERVER
    assert rotated.context is not None and rotated.parent is not None
    assert f"{rotated.context.trace_id:032x}" == TRACE_ID and f"{rotated.parent.span_id:016x}" == PARENT_ID
    assert dict(rotated.attributes or {}) == {
        "http.request.method": "POST",
        "http.route": "/v1/keys/{id}/rotate",
        "http.response.status_code": 201,
    }
    # A NATS request made while handling it carries the server span on.
    assert sent_on == {"traceparent": f"00-{TRACE_ID}-{rotated.context.span_id:016x}-01"}
    assert missing.name == "GET" and (missing.attributes or {})["http.response.status_code"] == 404


async def test_a_responder_continues_the_trace_its_request_carries(exporter: InMemorySpanExporter) -> None:
    seen: list[trace.SpanContext] = []

    async def handler(_: Msg) -> None:
        seen.append(trace.get_current_span().get_span_context())

    answer = tracing.answering(tracer_to(exporter), "quota.check", handler)
    await answer(Msg(None, subject="quota.check", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}))
    await answer(Msg(None, subject="quota.check", headers=None))

    (span,) = exporter.get_finished_spans()  # the request without a traceparent makes none
    assert span.name == "quota.check" and span.kind == SpanKind.SERVER
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT_ID
    assert seen[0] == span.context and not seen[1].is_valid
    assert tracing.answering(None, "quota.check", handler) is handler


def test_each_request_of_a_batch_is_served_under_its_own_traceparent(exporter: InMemorySpanExporter) -> None:
    other = "1" * 16
    seen: list[trace.SpanContext] = []
    tracer = tracer_to(exporter)
    for traceparent in (f"00-{TRACE_ID}-{PARENT_ID}-01", None, f"00-{TRACE_ID}-{other}-01", "garbage"):
        with tracing.serving(tracer, "quota.check", traceparent):
            seen.append(trace.get_current_span().get_span_context())
    with tracing.serving(None, "quota.check", f"00-{TRACE_ID}-{PARENT_ID}-01"):
        seen.append(trace.get_current_span().get_span_context())

    first, second = exporter.get_finished_spans()  # none for no traceparent, an invalid one or no tracer
    assert {first.name, second.name} == {"quota.check"} and {first.kind, second.kind} == {SpanKind.SERVER}
    assert [f"{s.parent.span_id:016x}" for s in (first, second) if s.parent] == [PARENT_ID, other]
    assert seen[0] == first.context and seen[2] == second.context
    assert not seen[1].is_valid and not seen[3].is_valid and not seen[4].is_valid


async def test_a_service_traces_only_when_an_otlp_endpoint_is_set_and_then_exports_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tracing, "_providers", {})
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert tracing.tracer("quota") is None
    assert tracing.nats_headers() is None

    received: list[bytes] = []

    async def collect(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response()

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    async with TestServer(app) as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", str(collector.make_url("")).rstrip("/"))
        tracer = tracing.tracer("quota")
        assert tracer is not None
        tracer.start_span("quota.check").end()
        provider = tracing.provider("quota")
        await asyncio.to_thread(provider.shutdown)  # flushes, over HTTP, from the exporter's thread
    (body,) = received
    assert b"flowplan-quota" in body and b"quota.check" in body
