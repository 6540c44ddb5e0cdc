"""A batch's messages handed to nats-py as one write of prebuilt HPUB frames (libs.outbound),
against a real nats-server: the frames parse (headers, reply, payload; Nats-Msg-Id dedupes; the
traceparent arrives), and each refusal is nats-py's own `publish`'s: a payload over max_payload,
a closed connection, and while reconnecting, the reconnect buffer's room, after which what was
buffered is delivered."""

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from opentelemetry.sdk.trace import TracerProvider

from libs.eventlog.publisher import EventPublisher, PublishFailed
from libs.eventlog.streams import declare_streams
from libs.localservers import LocalNats, free_port
from libs.outbound import Frames, header_name
from proto.v1 import UsageRecorded

pytestmark = pytest.mark.connected
MSG_ID = header_name(api.Header.MSG_ID)


@pytest.fixture
async def stream(nc: Client) -> AsyncIterator[str]:
    """A stream of its own, taking `<name>.>`."""
    name = f"outbound_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name}.>"])
    yield name
    await js.delete_stream(name)


async def stored(nc: Client, stream: str, expected: int, subject: str = "") -> list[Msg]:
    """The stream's messages, once it holds `expected` of them (never more: no duplicate stored)."""
    js = nc.jetstream()
    for _ in range(200):
        if (await js.stream_info(stream)).state.messages >= expected:
            break
        await asyncio.sleep(0.05)
    config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL)
    sub = await js.pull_subscribe(subject or f"{stream}.>", stream=stream, config=config)
    msgs: list[Msg] = []
    try:
        while len(msgs) < expected:
            msgs += await sub.fetch(expected - len(msgs), timeout=10)
    finally:
        await sub.unsubscribe()
    assert (await js.stream_info(stream)).state.messages == expected
    return msgs


def usage(account: str, model: str = "deepseek/deepseek-chat") -> UsageRecorded:
    return UsageRecorded(
        event_id=uuid.uuid4().hex, account_id=account, occurred_at=datetime.now(UTC), model=model,
        input_tokens=10, output_tokens=10, billing_mode="subscription", usd_cost_micros=10,
        flows_micros=20_000, usd_per_flow="5/198", multiplier="1",
    )  # fmt: skip


async def test_frames_arrive_as_published_and_a_message_id_dedupes(nc: Client, stream: str) -> None:
    acks: list[Msg] = []

    async def ack(msg: Msg) -> None:
        acks.append(msg)

    await nc.subscribe(f"{stream}-acks.*", cb=ack)
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    async def send() -> None:
        frames = Frames(nc)
        for i in range(3):
            headers = [(MSG_ID, f"id-{i}")] + ([(b"traceparent: ", trace)] if i == 1 else [])
            frames.add(f"{stream}.m.{i}", f"{stream}-acks.{i}", f"payload {i}\r\nPUB x 1".encode(), headers)
        await frames.send()

    await send()
    await send()  # the same ids again
    for _ in range(200):
        if len(acks) == 6:
            break
        await asyncio.sleep(0.01)
    decoded = sorted((msg.subject, msgspec.json.decode(msg.data).get("duplicate", False)) for msg in acks)
    assert decoded == sorted([(f"{stream}-acks.{i}", dup) for i in range(3) for dup in (False, True)])
    msgs = await stored(nc, stream, 3)
    assert [m.subject for m in msgs] == [f"{stream}.m.{i}" for i in range(3)]
    assert [m.data for m in msgs] == [f"payload {i}\r\nPUB x 1".encode() for i in range(3)]
    assert [(m.headers or {}).get(api.Header.MSG_ID) for m in msgs] == ["id-0", "id-1", "id-2"]
    assert [(m.headers or {}).get("traceparent") for m in msgs] == [None, trace, None]


async def test_header_values_are_cleaned_and_bad_subjects_refused_as_publish_does(nc: Client) -> None:
    seen: list[Msg] = []

    async def see(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe("outbound.clean", cb=see)
    value = "  a\r\nInjected: yes\n "
    await nc.publish("outbound.clean", b"1", headers={"x-v": value})
    frames = Frames(nc)
    frames.add("outbound.clean", "", b"2", [(header_name("x-v"), value)])
    await frames.send()
    await nc.flush()
    for _ in range(200):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    assert [dict(m.headers or {}) for m in seen] == [{"x-v": "a  Injected: yes"}] * 2
    for subject, reply in (("", ""), ("a b", ""), ("a\r\nPUB", ""), ("ok", "re ply")):
        with pytest.raises(nats.errors.BadSubjectError):
            await nc.publish(subject, b"", reply=reply)
        with pytest.raises(nats.errors.BadSubjectError):
            Frames(nc).add(subject, reply, b"", [])
    with pytest.raises(nats.errors.BadHeaderError):
        header_name("bad key")


async def test_a_payload_over_max_payload_is_refused_as_publish_refuses_it(nc: Client, stream: str) -> None:
    limit = nc.max_payload
    with pytest.raises(nats.errors.MaxPayloadError):
        await nc.publish(f"{stream}.big", b"x" * (limit + 1))
    with pytest.raises(nats.errors.MaxPayloadError):
        Frames(nc).add(f"{stream}.big", "", b"x" * (limit + 1), [])
    Frames(nc).add(f"{stream}.big", "", b"x" * limit, [])  # at the limit: taken, as by publish
    # Through the publisher: the batch with one event too big is refused whole, nothing stored.
    publisher = EventPublisher(nc, stream, timeout_s=2)
    await publisher.start()
    with pytest.raises(PublishFailed, match="MaxPayload"):
        await publisher.publish([usage("acc_small"), usage("acc_big", model="m" * limit)])
    assert await stored(nc, stream, 0) == []


async def test_the_publisher_dedupes_and_carries_the_trace(nc: Client) -> None:
    class Streams:
        stream, dlq_stream = f"log_{uuid.uuid4().hex[:6]}", f"dlq_{uuid.uuid4().hex[:6]}"
        partitions, stream_max_bytes, stream_replicas = 2, 1 << 24, 1

    await declare_streams(nc.jetstream(), Streams())
    tracer = TracerProvider().get_tracer("test")
    publisher = EventPublisher(nc, Streams.stream, tracer=tracer)
    await publisher.start()
    events = [usage("acc_trace"), usage("acc_trace")]
    with tracer.start_as_current_span("call") as span:
        first = await publisher.publish(events)
    again = await publisher.publish(events[::-1])
    assert [a.duplicate for a in first] == [False, False] and [a.duplicate for a in again] == [True, True]
    msgs = await stored(nc, Streams.stream, 2, ">")
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert [(m.headers or {}).get(api.Header.MSG_ID) for m in msgs] == [e.event_id for e in events]
    assert all((m.headers or {}).get("traceparent", "").startswith(f"00-{trace_id}-") for m in msgs)
    assert [msgspec.json.decode(m.data, type=UsageRecorded) for m in msgs] == events


async def test_a_closed_connection_is_refused(nats_server: LocalNats) -> None:
    client = await nats.connect(nats_server.url)
    await client.close()
    frames = Frames(client)
    frames.add("outbound.closed", "", b"x", [])
    with pytest.raises(nats.errors.ConnectionClosedError):
        await frames.send()


async def test_while_reconnecting_the_buffer_limit_is_publishs_and_the_buffered_arrive(tmp_path: Path) -> None:
    """Two clients lose their server: one publishes message by message until nats-py refuses, the
    other hands the same frames over as one batch. The batch is taken up to the same message and
    refused whole one message past it; what each buffered is stored once the server is back."""
    server = LocalNats(tmp_path / "nats", port=free_port())
    server.start()
    options = {"pending_size": 4096, "reconnect_time_wait": 0.1, "max_reconnect_attempts": -1}
    one, batch = await nats.connect(server.url, **options), await nats.connect(server.url, **options)
    try:
        await one.jetstream().add_stream(name="reconnect", subjects=["reconnect.>"])
        server.kill()
        for _ in range(200):
            if one.is_reconnecting and batch.is_reconnecting:
                break
            await asyncio.sleep(0.01)
        assert one.is_reconnecting and batch.is_reconnecting

        taken = 0
        with pytest.raises(nats.errors.OutboundBufferLimitError):
            while True:
                await one.publish(f"reconnect.{taken}", b"p" * 700, headers={api.Header.MSG_ID: f"one-{taken:04d}"})
                taken += 1
        assert 2 <= taken < 10

        def frames(count: int) -> Frames:
            built = Frames(batch)
            for i in range(count):
                built.add(f"reconnect.{i}", "", b"p" * 700, [(MSG_ID, f"bat-{i:04d}")])
            return built

        with pytest.raises(nats.errors.OutboundBufferLimitError):
            await frames(taken + 1).send()
        assert batch.pending_data_size == 0  # refused whole: nothing of it buffered
        await frames(taken).send()
        assert batch.pending_data_size == one.pending_data_size

        server.start()
        for _ in range(500):
            if one.is_connected and batch.is_connected:
                break
            await asyncio.sleep(0.01)
        await batch.flush()
        await one.flush()
        msgs = await stored(one, "reconnect", 2 * taken)
        ids = sorted((m.headers or {}).get(api.Header.MSG_ID, "") for m in msgs)
        assert ids == sorted(f"{c}-{i:04d}" for c in ("one", "bat") for i in range(taken))
    finally:
        await one.close()
        await batch.close()
        server.kill()
