"""The relay of an untranslated stream: the chat and messages relays' fast reading held equal to
the general one (every event decoded, the protocol asked what it is) on any stream of theirs, cut
anywhere: what the client is sent of each chunk and at the end, and the usage billed."""

import itertools
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from services.gateway.protocols import CHAT, MESSAGES, RESPONSES, Protocol
from services.gateway.relay import ChatRelay, MessagesRelay, Relay, Translated, relay
from services.gateway.translate import Translation, plan
from services.gateway.usage import Tokens

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["content", "x"]), inner, max_size=2),
    max_leaves=6,
)
usages = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"prompt_tokens": st.integers(0, 5000), "completion_tokens": st.integers(0, 5000)},
        optional={"prompt_tokens_details": st.fixed_dictionaries({"cached_tokens": st.integers(0, 5000)})},
    ),
    json_values,
)
deltas = st.one_of(
    st.fixed_dictionaries({}, optional={"role": st.just("assistant"), "content": st.text(max_size=6) | json_values}),
    json_values,
)
choices = st.one_of(
    st.fixed_dictionaries(
        {"index": st.just(0), "delta": deltas},
        optional={"finish_reason": st.sampled_from([None, "stop", "length", ""]) | json_values},
    ),
    json_values,
)
chunks = st.fixed_dictionaries(
    {"id": st.just("chatcmpl-1"), "object": st.just("chat.completion.chunk")},
    optional={"choices": st.lists(choices, max_size=2) | json_values, "usage": usages},
)


def as_event(data: Any, compact: bool) -> bytes:
    separators = (",", ":") if compact else (", ", ": ")
    return b"data: " + json.dumps(data, separators=separators).encode() + b"\n\n"


others = st.sampled_from(
    [b"data: [DONE]\n\n", b": keep-alive\n\n", b"event: x\ndata: {}\n\n", b"data: {not json\n\n", b"data:\n\n",
     b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', b'data:{"choices":[{"delta":{"content":"b"}}]} \n\n',
     b'data: {"choices": [{"delta": {"content": "c"}}]}\n\n']
)  # fmt: skip
events = st.one_of(st.builds(as_event, chunks, st.booleans()), others)
PLAIN = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}\n\n'
FINISH = b'data: {"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}\n\n'
USAGE_ONLY = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2}}\n\n'
DONE = b"data: [DONE]\n\n"
ANTHROPIC_STREAM = [
    {"type": "message_start", "message": {"id": "msg_1", "usage": {"input_tokens": 9, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    *[{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}}] * 5,
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 5}},
    {"type": "message_stop"},
]


anthropic_usages = st.one_of(
    st.fixed_dictionaries({}, optional={"input_tokens": st.integers(0, 5000), "output_tokens": st.integers(0, 5000)}),
    json_values,
)
anthropic_data = st.one_of(
    st.builds(lambda usage: {"type": "message_start", "message": {"id": "msg_1", "usage": usage}}, anthropic_usages),
    st.builds(lambda usage: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage},
              anthropic_usages),
    st.sampled_from([{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}},
                     {"type": "content_block_start", "index": 0}, {"type": "content_block_stop", "index": 0},
                     {"type": "ping"}, {"type": "message_stop"}, {"type": "error"}, {"x": 1}]),
    st.fixed_dictionaries({"type": json_values}, optional={"message": json_values, "usage": json_values}),
    json_values,
)  # fmt: skip


def as_anthropic_event(data: Any, named: bool) -> bytes:
    kind = data.get("type") if isinstance(data, dict) else None
    line = b"event: %s\n" % str(kind).encode() if named else b""
    return line + as_event(data, compact=True)


anthropic_events = st.one_of(st.builds(as_anthropic_event, anthropic_data, st.booleans()), others)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def through(
    kind: type[Relay], pieces: list[bytes], strip_usage: bool, cut: bool, client: Protocol = CHAT
) -> tuple[Any, ...]:
    relay = kind(client, client.meter(), strip_usage)
    sent = [relay.feed(piece) for piece in pieces]
    usage = relay.usage
    return sent, relay.end(Tokens(), cut), usage.final(), usage.output_reported, usage.deltas


@settings(max_examples=400, deadline=None)
@given(
    stream=st.lists(events, max_size=12), tail=st.binary(max_size=12), crlf=st.booleans(),
    cuts=st.lists(st.integers(0, 10**6), max_size=12), strip_usage=st.booleans(), cut=st.booleans(),
)  # fmt: skip
@example(stream=[PLAIN, PLAIN, FINISH, USAGE_ONLY, DONE], tail=b"", crlf=False, cuts=[], strip_usage=True, cut=False)
@example(stream=[PLAIN, USAGE_ONLY, PLAIN, FINISH, DONE], tail=b"da", crlf=True, cuts=[7], strip_usage=True, cut=False)
def test_the_chat_relay_sends_and_bills_exactly_what_the_general_one_does(
    stream: list[bytes], tail: bytes, crlf: bool, cuts: list[int], strip_usage: bool, cut: bool
) -> None:
    data = b"".join(stream) + tail
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    pieces = split_at(data, cuts)
    assert through(ChatRelay, pieces, strip_usage, cut) == through(Relay, pieces, strip_usage, cut)


@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(anthropic_events, max_size=12), tail=st.binary(max_size=12), crlf=st.booleans(),
    cuts=st.lists(st.integers(0, 10**6), max_size=12), cut=st.booleans(),
)  # fmt: skip
def test_the_messages_relay_sends_and_bills_exactly_what_the_general_one_does(
    stream: list[bytes], tail: bytes, crlf: bool, cuts: list[int], cut: bool
) -> None:
    data = b"".join(stream) + tail
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    pieces = split_at(data, cuts)
    assert through(MessagesRelay, pieces, False, cut, MESSAGES) == through(Relay, pieces, False, cut, MESSAGES)


def test_a_chat_stream_goes_on_as_it_came_but_for_its_held_end_and_the_gateway_s_usage_event() -> None:
    relay = ChatRelay(CHAT, CHAT.meter(), strip_usage=True)
    assert relay.feed(PLAIN * 3 + FINISH[:10]) == PLAIN * 3
    assert relay.feed(FINISH[10:] + USAGE_ONLY + DONE) == b""
    assert relay.end(Tokens(), cut=False) == FINISH + DONE
    assert relay.usage.final() == Tokens(input=9, output=2) and relay.usage.deltas == 3


@pytest.mark.parametrize(
    ("kind", "client", "stream", "general"),
    [(ChatRelay, CHAT, PLAIN * 5 + FINISH + USAGE_ONLY + DONE, [FINISH, USAGE_ONLY, DONE]),
     (MessagesRelay, MESSAGES, b"".join(as_anthropic_event(e, named=True) for e in ANTHROPIC_STREAM),
      [as_anthropic_event(ANTHROPIC_STREAM[i], named=True) for i in (0, -2, -1)])],
)  # fmt: skip
def test_only_what_is_not_a_plain_event_goes_the_general_way(
    kind: type[Relay], client: Protocol, stream: bytes, general: list[bytes]
) -> None:
    """The fast reading is taken: every content delta, start and ping goes on without a dict."""
    seen: list[bytes] = []

    class Watched(kind):  # type: ignore[valid-type,misc]
        def keeps(self, raw: bytes, data: Any) -> bool:
            seen.append(raw)
            return bool(super().keeps(raw, data))

    Watched(client, client.meter(), True).feed(stream)
    assert seen == general


def test_each_stream_gets_its_relay() -> None:
    usage = CHAT.meter()
    assert type(relay(CHAT, usage, False, None)) is ChatRelay
    assert type(relay(MESSAGES, MESSAGES.meter(), False, None)) is MessagesRelay
    assert type(relay(RESPONSES, RESPONSES.meter(), False, None)) is Relay
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    translation = plan(CHAT.path, body, frozenset({"messages"}))
    assert isinstance(translation, Translation)
    assert type(relay(CHAT, usage, False, translation.stream("id", 0))) is Translated
