"""Commands and queries served by faststream (libs.rpc), in memory through TestNatsBroker: a
handler's return value is the reply, and a refusal or a request that does not decode is answered
with the rpc's refusal reply, never left to time out."""

from datetime import UTC, datetime
from typing import Any, get_args

import msgspec
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from faststream.nats import TestNatsBroker
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from libs.clock import ManualClock
from libs.refusal import Refusal
from libs.rpc import Responders, Unavailable, refusal_of
from libs.tracing import nats_headers as tracing_headers
from libs.web import api_errors
from proto.v1 import (
    AccountAccess,
    DeadLetterRetried,
    GetAccountAccess,
    KeyCommandFailed,
    KeyList,
    ListKeys,
    PreviewRefund,
    RetryDeadLetter,
    RevokeKey,
    RotateKey,
    encode,
    rpc,
)
from services.keys import domain
from services.keys.registry import KeyRegistry
from services.keys.responder import KeysResponder

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)


def keys_responders() -> tuple[Responders, str]:
    registry = KeyRegistry()
    created, _ = domain.issue("acc_1", "ci", "payg", NOW)
    registry.apply(created)
    responders = Responders("keys", "nats://127.0.0.1:1")  # never connected: TestNatsBroker patches it
    # No publisher or connection: these requests are answered before anything would be published.
    KeysResponder(registry, None, None, ManualClock(NOW)).serve(responders)  # type: ignore[arg-type]
    return responders, created.key_id


async def ask(broker: Any, call: rpc.Rpc[Any, Any], body: bytes) -> Any:
    reply = await broker.request(body, call.subject, timeout=1)
    return call.decoder().decode(reply.body)


async def test_a_query_is_answered_with_its_typed_reply() -> None:
    responders, key_id = keys_responders()
    async with TestNatsBroker(responders.broker) as broker:
        listed = await ask(broker, rpc.KEYS_LIST, encode(ListKeys(account_id="acc_1")))
        access = await ask(broker, rpc.KEYS_ACCESS, encode(GetAccountAccess(account_id="acc_1")))
    assert isinstance(listed, KeyList) and [k.id for k in listed.keys] == [key_id]
    assert access == AccountAccess(account_id="acc_1", suspended=False, changed=False)


async def test_a_refusal_is_a_typed_reply_with_its_code() -> None:
    responders, key_id = keys_responders()
    async with TestNatsBroker(responders.broker) as broker:
        other = await ask(broker, rpc.KEYS_ROTATE, encode(RotateKey(account_id="acc_2", key_id=key_id)))
        revoked = await ask(broker, rpc.KEYS_REVOKE, encode(RevokeKey(account_id="acc_2", key_id=key_id)))
    assert isinstance(other, KeyCommandFailed) and other.code == "key_not_found"
    assert isinstance(revoked, KeyCommandFailed) and revoked.code == "key_not_found"
    refused = refusal_of(rpc.KEYS_ROTATE, other)
    assert (refused.code, refused.status) == ("key_not_found", 404)


async def test_a_request_that_does_not_decode_is_refused_naming_what_is_wrong() -> None:
    responders, _ = keys_responders()
    bad_name = b'{"type": "CreateKey", "account_id": "acc_1", "name": "a\\u0000b", "kind": "payg"}'
    async with TestNatsBroker(responders.broker) as broker:
        garbage = await ask(broker, rpc.KEYS_LIST, b"not json")
        missing = await ask(broker, rpc.KEYS_LIST, b'{"type": "ListKeys"}')
        control = await ask(broker, rpc.KEYS_CREATE, bad_name)
    assert isinstance(garbage, KeyCommandFailed) and garbage.code == "invalid_request"
    assert isinstance(missing, KeyCommandFailed) and "account_id" in missing.message
    assert isinstance(control, KeyCommandFailed) and "name" in control.message


async def test_a_handler_that_fails_answers_internal_error_and_a_refusal_keeps_its_field() -> None:
    responders = Responders("billing", "nats://127.0.0.1:1")

    async def history(request: Any) -> Any:
        if request.account_id == "acc_conflict":
            raise Refusal("ref_conflict", "recorded with another amount", "topup_ref")
        raise RuntimeError("boom")

    responders.reply(rpc.BILLING_HISTORY, history)
    async with TestNatsBroker(responders.broker) as broker:
        failed = await ask(broker, rpc.BILLING_HISTORY, b'{"type": "BillingHistoryRequest", "account_id": "acc_1"}')
        conflict = await ask(
            broker, rpc.BILLING_HISTORY, b'{"type": "BillingHistoryRequest", "account_id": "acc_conflict"}'
        )
    assert msgspec.structs.asdict(failed)["code"] == "internal_error"
    assert (conflict.code, conflict.field) == ("ref_conflict", "topup_ref")
    assert refusal_of(rpc.BILLING_HISTORY, conflict).status == 409


def test_every_command_and_query_subject_is_declared_once() -> None:
    subjects = [call.subject for call in rpc.RPCS]
    assert len(subjects) == len(set(subjects))
    for call in rpc.RPCS:
        assert (call.refusal is None) == (not call.status)
        if call.refusal is not None:  # every code its refusal reply may carry has its HTTP status
            assert set(call.status) == set(get_args(call.refusal.__annotations__["code"]))


async def test_a_request_carrying_a_trace_context_is_handled_in_a_server_span_of_it() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    responders = Responders("keys", "nats://127.0.0.1:1", tracer)
    registry = KeyRegistry()
    KeysResponder(registry, None, None, ManualClock(NOW)).serve(responders)  # type: ignore[arg-type]
    with tracer.start_as_current_span("caller") as caller:
        headers = tracing_headers()
    async with TestNatsBroker(responders.broker) as broker:
        await broker.request(encode(ListKeys(account_id="acc_1")), rpc.KEYS_LIST.subject, headers=headers, timeout=1)
        await broker.request(encode(ListKeys(account_id="acc_1")), rpc.KEYS_LIST.subject, timeout=1)  # untraced
    spans = [s for s in exporter.get_finished_spans() if s.name == rpc.KEYS_LIST.subject]
    assert len(spans) == 1 and spans[0].kind == SpanKind.SERVER
    assert spans[0].parent is not None and spans[0].parent.span_id == caller.get_span_context().span_id
    assert spans[0].context is not None and spans[0].context.trace_id == caller.get_span_context().trace_id


async def test_a_service_that_does_not_answer_is_a_503_with_retry_after_naming_it() -> None:
    async def handler(_: web.Request) -> web.Response:
        raise Unavailable("billing", rpc.BILLING_HISTORY.subject)

    app = web.Application(middlewares=[api_errors])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/")
        body = await response.json()
    assert response.status == 503 and response.headers["Retry-After"] == "1"
    assert body["error"]["code"] == "billing_unavailable"


async def test_transient_and_invalid_failures_and_a_code_the_reply_cannot_carry() -> None:
    responders = Responders("refund", "nats://127.0.0.1:1")

    async def preview(request: Any) -> Any:
        if request.account_id == "acc_down":
            raise ConnectionRefusedError("postgres is away")
        if request.account_id == "acc_bad":
            raise ValueError("the database refused a value")
        raise Refusal("no_such_code", "a code RefundRefused cannot carry")

    responders.reply(rpc.REFUND_PREVIEW, preview, invalid=(ValueError,), transient=(OSError,), retry_message="retry")
    async with TestNatsBroker(responders.broker) as broker:
        down, bad, bogus = [
            await ask(broker, rpc.REFUND_PREVIEW, encode(PreviewRefund(account_id=account)))
            for account in ("acc_down", "acc_bad", "acc_bogus")
        ]
    assert (down.code, down.message, refusal_of(rpc.REFUND_PREVIEW, down).status) == ("unavailable", "retry", 503)
    assert (bad.code, refusal_of(rpc.REFUND_PREVIEW, bad).status) == ("invalid_request", 400)
    assert (bogus.code, refusal_of(rpc.REFUND_PREVIEW, bogus).status) == ("internal_error", 500)


async def test_an_rpc_whose_reply_says_it_failed_answers_an_undecodable_request_with_that_reply() -> None:
    responders = Responders("quota", "nats://127.0.0.1:1")
    retry = rpc.dlq_retry("quota")

    async def retried(request: RetryDeadLetter) -> DeadLetterRetried:
        return DeadLetterRetried(dlq_seq=request.dlq_seq, applied=True)

    def undecodable(error: str) -> DeadLetterRetried:
        return DeadLetterRetried(dlq_seq=0, applied=False, error=f"bad request: {error}")

    responders.reply(retry, retried, undecodable=undecodable)
    async with TestNatsBroker(responders.broker) as broker:
        fine = await ask(broker, retry, encode(RetryDeadLetter(dlq_seq=7)))
        bad = await ask(broker, retry, b'{"type": "RetryDeadLetter", "dlq_seq": "seven"}')
    assert fine == DeadLetterRetried(dlq_seq=7, applied=True)
    assert not bad.applied and bad.error.startswith("bad request: Expected `int`")
