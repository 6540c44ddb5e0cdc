"""One trace from a gateway call through NATS to quota's Postgres write.

The gateway and quota run in this process so that an in-memory exporter sees their spans;
the simulator, keys and ingress run as child processes (untraced)."""

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from libs import tracing
from libs.eventlog.publisher import EventPublisher
from libs.settings import Settings
from proto.v1 import UsageRecorded
from services.gateway import metrics as gateway_metrics
from services.gateway.app import GatewayService
from services.quota.app import QuotaService
from tests.stack import Stack, eventually

pytestmark = pytest.mark.connected


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing, "_providers", {})
        for service in ("gateway", "quota"):
            tracing.provider(service).add_span_processor(SimpleSpanProcessor(exporter))
        yield exporter
        for provider in tracing._providers.values():
            provider.shutdown()


@pytest.fixture(scope="module")
async def traced(settings: Settings, workdir: Path, exporter: InMemorySpanExporter) -> AsyncIterator[Stack]:
    log_dir = workdir / f"logs-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir()
    stack = Stack(settings, log_dir)
    children = [stack.simulator, stack.keys, stack.ingress]
    await asyncio.gather(*(asyncio.to_thread(child.start) for child in children))
    quota, gateway = QuotaService(settings), GatewayService(settings)
    await quota.start()
    await gateway.start()
    yield stack
    await gateway.stop()
    await quota.stop()
    for child in reversed(children):
        child.stop()


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def service(span: ReadableSpan) -> object:
    return span.resource.attributes["service.name"]


def in_trace(exporter: InMemorySpanExporter, trace_id: int) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.context is not None and s.context.trace_id == trace_id]


async def finished(exporter: InMemorySpanExporter, name: str, trace_id: int | None = None) -> list[ReadableSpan]:
    spans = exporter.get_finished_spans() if trace_id is None else in_trace(exporter, trace_id)
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_one_gateway_call_is_one_trace_down_to_quotas_postgres_write(
    traced: Stack, exporter: InMemorySpanExporter
) -> None:
    account = await traced.create_account()
    client = openai.AsyncOpenAI(base_url=f"{traced.gateway_url}/v1", api_key=account["key"], max_retries=0)
    await client.chat.completions.create(
        model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )

    (http,) = await eventually(lambda: finished(exporter, "POST /v1/chat/completions"))
    assert http.context is not None
    await eventually(lambda: finished(exporter, "write quota", http.context.trace_id))
    spans = in_trace(exporter, http.context.trace_id)

    request = one(spans, "POST /v1/chat/completions")
    check = one(spans, "quota.check")
    publish = one(spans, "publish UsageRecorded")
    consume = one(spans, "consume UsageRecorded")
    write = one(spans, "write quota")
    assert request.parent is None and request.kind == SpanKind.SERVER and service(request) == "flowplan-gateway"
    assert (request.attributes or {})["http.response.status_code"] == 200
    assert (request.attributes or {})["flowplan.account_id"] == account["account_id"]
    assert parent_of(check) == span_id(request) and check.kind == SpanKind.SERVER and service(check) == "flowplan-quota"
    assert parent_of(publish) == span_id(request) and publish.kind == SpanKind.PRODUCER
    assert service(publish) == "flowplan-gateway"
    assert parent_of(consume) == span_id(publish) and consume.kind == SpanKind.CONSUMER
    assert service(consume) == "flowplan-quota"
    assert parent_of(write) == span_id(consume) and service(write) == "flowplan-quota"
    assert (write.attributes or {})["db.system.name"] == "postgresql"

    everything = exporter.get_finished_spans()
    # The account's own events came from the untraced ingress: quota consumed them without spans.
    assert {s.name for s in everything if s.kind == SpanKind.CONSUMER} == {"consume UsageRecorded"}
    # No span names or carries the API key.
    assert not [s for s in everything if account["key"] in f"{s.name} {dict(s.attributes or {})}"]


def usage(account_id: str) -> UsageRecorded:
    return UsageRecorded(
        event_id=uuid.uuid4().hex, account_id=account_id, occurred_at=datetime.now(UTC),
        model="deepseek/deepseek-chat", input_tokens=10, output_tokens=10, billing_mode="subscription",
        usd_cost_micros=10, flows_micros=20_000, usd_per_flow="5/198", multiplier="1",
    )  # fmt: skip


async def test_events_published_inside_a_span_continue_its_trace(traced: Stack, exporter: InMemorySpanExporter) -> None:
    """What ingress and keys do: publish while handling a traced request, one publish span for the batch."""
    account = await traced.create_account()
    tracer = tracing.tracer("gateway")
    assert tracer is not None
    nc = await traced.nats()
    try:
        publisher = EventPublisher(nc, traced.settings.stream, tracer=tracer)
        await publisher.start()
        with tracer.start_as_current_span("ingest") as root:
            await publisher.publish([usage(account["account_id"]) for _ in range(3)])
    finally:
        await nc.close()
    trace_id = root.get_span_context().trace_id

    async def all_consumed() -> bool:
        consumes = await finished(exporter, "consume UsageRecorded", trace_id)
        return sum((s.attributes or {})["messaging.batch.message_count"] for s in consumes) == 3

    await eventually(all_consumed)
    spans = in_trace(exporter, trace_id)
    publish = one(spans, "publish UsageRecorded")
    assert parent_of(publish) == root.get_span_context().span_id
    # Quota applies them in one batch (or a few): one consume span per batch, not per event.
    consumes = [s for s in spans if s.name == "consume UsageRecorded"]
    assert 1 <= len(consumes) <= 3 and {parent_of(s) for s in consumes} == {span_id(publish)}
    writes = [s for s in spans if s.name == "write quota"]
    assert sorted(parent_of(s) or 0 for s in writes) == sorted(span_id(s) for s in consumes)


async def test_each_call_of_a_coalesced_burst_has_its_own_quota_check_span(
    traced: Stack, exporter: InMemorySpanExporter
) -> None:
    account = await traced.create_account()
    client = openai.AsyncOpenAI(base_url=f"{traced.gateway_url}/v1", api_key=account["key"], max_retries=0)
    together = sum(sum(counts[1:]) for _, counts, _ in gateway_metrics.quota_check_batch.series())

    async def call() -> None:
        await client.chat.completions.create(
            model="deepseek/deepseek-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )

    await asyncio.gather(*(call() for _ in range(8)))  # within the free plan's 10 a minute
    sent_together = sum(sum(counts[1:]) for _, counts, _ in gateway_metrics.quota_check_batch.series()) - together
    assert sent_together > 0  # some of the burst's checks went in a batch

    requests = await eventually(lambda: _all(exporter, "POST /v1/chat/completions", account["account_id"], 8))
    for request in requests:
        assert request.context is not None
        checks = [s for s in in_trace(exporter, request.context.trace_id) if s.name == "quota.check"]
        assert [parent_of(s) for s in checks] == [span_id(request)] and service(checks[0]) == "flowplan-quota"


async def _all(exporter: InMemorySpanExporter, name: str, account_id: str, n: int) -> list[ReadableSpan] | None:
    spans = [s for s in exporter.get_finished_spans()
             if s.name == name and (s.attributes or {}).get("flowplan.account_id") == account_id]  # fmt: skip
    return spans if len(spans) == n else None
