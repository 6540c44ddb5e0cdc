"""The gateway's view of a call's usage: the upstreams' usage objects, SSE splitting across
arbitrary chunk boundaries, usage followed along OpenAI and Anthropic streams, and the
reservation estimate made before a call runs."""

import itertools
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from libs.pricing.catalog import load_catalog
from services.gateway.estimate import DEFAULT_MAX_OUTPUT, estimate_usd_micros
from services.gateway.protocols import MESSAGES, RESPONSES
from services.gateway.usage import SseEvent, SseSplitter, StreamUsage, Tokens, data_of, from_anthropic, from_openai

CATALOG = load_catalog()
CHAT_MODELS = sorted(m.id for m in CATALOG.models.values() if m.kind == "chat")
IMAGE_MODELS = sorted(m.id for m in CATALOG.models.values() if m.kind == "image")
counts = st.integers(0, 10**7)


# --- from_openai ---------------------------------------------------------------------------


def test_openai_prompt_tokens_include_the_cached_ones():
    usage = {
        "prompt_tokens": 1200,
        "completion_tokens": 80,
        "total_tokens": 1280,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 40},
    }
    assert from_openai(usage) == Tokens(input=176, output=80, cached=1024)


@given(prompt=counts, cached=counts, output=counts)
def test_openai_input_is_prompt_minus_cached_and_the_total_is_kept(prompt, cached, output):
    usage = {"prompt_tokens": prompt, "completion_tokens": output, "prompt_tokens_details": {"cached_tokens": cached}}
    tokens = from_openai(usage)
    assert tokens.output == output
    assert tokens.input >= 0 and tokens.cached >= 0
    assert tokens.input + tokens.cached == prompt  # cached beyond the prompt is not invented
    if cached <= prompt:
        assert tokens == Tokens(prompt - cached, output, cached)


def test_openai_responses_api_names_are_read_too():
    assert from_openai({"input_tokens": 50, "output_tokens": 7}) == Tokens(50, 7, 0)


@pytest.mark.parametrize("usage", [None, [], "usage", 3, {}])
def test_openai_without_a_usage_object_is_zero(usage):
    assert from_openai(usage) == Tokens()


@pytest.mark.parametrize("bad", [None, -5, "12", 1.5, [3]])
def test_openai_malformed_counts_are_zero(bad):
    usage = {"prompt_tokens": bad, "completion_tokens": bad, "prompt_tokens_details": {"cached_tokens": bad}}
    assert from_openai(usage) == Tokens()
    assert from_openai({"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": bad}) == Tokens(10, 2)


# --- from_anthropic ------------------------------------------------------------------------


def test_anthropic_input_excludes_cache_reads_and_includes_cache_writes():
    usage = {
        "input_tokens": 25,
        "cache_creation_input_tokens": 1500,
        "cache_read_input_tokens": 4000,
        "output_tokens": 1,
    }
    assert from_anthropic(usage) == Tokens(input=1525, output=1, cached=4000)


@given(fresh=counts, written=counts, read=counts, first_output=counts, outputs=st.lists(counts, min_size=1))
def test_anthropic_message_start_then_message_deltas_keep_input_and_take_the_latest_output(
    fresh, written, read, first_output, outputs
):
    start = {
        "input_tokens": fresh,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": read,
        "output_tokens": first_output,
    }
    tokens = from_anthropic(start)
    assert tokens == Tokens(fresh + written, first_output, read)
    for output in outputs:
        tokens = from_anthropic({"output_tokens": output}, tokens)
        assert tokens == Tokens(fresh + written, output, read)


def test_anthropic_cumulative_message_delta_with_input_fields_gives_the_same_total():
    start = {"input_tokens": 40, "cache_creation_input_tokens": 10, "cache_read_input_tokens": 300, "output_tokens": 1}
    delta = {**start, "output_tokens": 220}
    assert from_anthropic(delta, from_anthropic(start)) == Tokens(50, 220, 300)


@pytest.mark.parametrize("usage", [None, [], "x"])
def test_anthropic_without_a_usage_object_keeps_what_was_known(usage):
    known = Tokens(5, 6, 7)
    assert from_anthropic(usage, known) == known
    assert from_anthropic(usage) == Tokens()


# --- SseSplitter ---------------------------------------------------------------------------


def sse(*events: str, newline: str = "\n") -> bytes:
    """Events given with \\n line ends, each ended by a blank line."""
    return b"".join((e.replace("\n", newline) + newline + newline).encode() for e in events)


def _data_of_every_line(raw: bytes):
    """The general reading of an event's data (every data line, joined): what the one-line fast path must match."""
    lines = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    if not lines or lines == [b"[DONE]"]:
        return None
    try:
        return json.loads(b"\n".join(lines))
    except ValueError:
        return None


LINES = st.sampled_from(["data: ", "data:", "event: x", ": ping", "data:  [DONE]", "id: 7", ""])
JSONS = st.sampled_from(['{"a":1}', "[DONE]", "[1, 2]", '{"b":', "", " 3 ", '"x"'])


@given(st.lists(st.tuples(LINES, JSONS), min_size=1, max_size=3))
@example([("data: ", '{"a":1}')])
@example([("data:", "[DONE]")])
def test_one_line_events_read_as_every_line_is_read(lines):
    raw = "\n".join(prefix + (text if prefix.startswith("data") else "") for prefix, text in lines).encode() + b"\n\n"
    if b"\n\n" in raw[:-2]:
        return  # not one event
    assert data_of(raw) == _data_of_every_line(raw)


def chunk_json(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"))


OPENAI_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"


def openai_chunk(choices, usage=None, include_usage=True) -> str:
    body = {
        "id": OPENAI_ID,
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_fc9f1d7035",
        "choices": choices,
    }
    if include_usage:
        body["usage"] = usage
    return "data: " + json.dumps(body)


def content(text: str, index: int = 0) -> dict:
    return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}


ROLE = {
    "index": 0,
    "delta": {"role": "assistant", "content": "", "refusal": None},
    "logprobs": None,
    "finish_reason": None,
}
STOP = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
OPENAI_USAGE = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}
WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", "."]


def openai_stream(include_usage: bool, words=WORDS) -> list[str]:
    events = [openai_chunk([ROLE], include_usage=include_usage)]
    events += [openai_chunk([content(w)], include_usage=include_usage) for w in words]
    events.append(openai_chunk([STOP], include_usage=include_usage))
    if include_usage:
        events.append(openai_chunk([], OPENAI_USAGE))
    events.append("data: [DONE]")
    return events


def anthropic_event(kind: str, **fields) -> str:
    return f"event: {kind}\ndata: " + json.dumps({"type": kind, **fields})


ANTHROPIC_START = anthropic_event(
    "message_start",
    message={
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5-20250929",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 472,
            "cache_creation_input_tokens": 2048,
            "cache_read_input_tokens": 8192,
            "output_tokens": 1,
        },
    },
)
ANTHROPIC_DELTAS = [
    anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": w}) for w in WORDS
]
ANTHROPIC_BODY = [
    ANTHROPIC_START,
    anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    anthropic_event("ping"),
    *ANTHROPIC_DELTAS,
    anthropic_event("content_block_stop", index=0),
]
ANTHROPIC_END = [
    anthropic_event(
        "message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None}, usage={"output_tokens": 187}
    ),
    anthropic_event("message_stop"),
]
ANTHROPIC_STREAM = ANTHROPIC_BODY + ANTHROPIC_END

STREAMS = {
    "openai_usage": sse(*openai_stream(True)),
    "openai_no_usage": sse(*openai_stream(False)),
    "anthropic": sse(*ANTHROPIC_STREAM),
    "comments_and_multiline": sse(": keep-alive", 'id: 7\nretry: 3000\ndata: {"a":\ndata: [1, 2]}', "data:{}"),
}


def feed_all(chunks: list[bytes]) -> tuple[list[SseEvent], bytes]:
    splitter = SseSplitter()
    events = [event for chunk in chunks for event in splitter.feed(chunk)]
    return events, splitter.rest()


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_whole_stream_splits_into_its_events():
    events, rest = feed_all([STREAMS["anthropic"]])
    assert rest == b""
    assert [e.raw for e in events] == [(e + "\n\n").encode() for e in ANTHROPIC_STREAM]
    assert b"".join(e.raw for e in events) == STREAMS["anthropic"]
    assert events[0].data["message"]["usage"]["input_tokens"] == 472
    assert events[2].data == {"type": "ping"}


def test_data_lines_are_joined_and_comments_and_done_have_no_data():
    events, _ = feed_all([STREAMS["comments_and_multiline"]])
    assert [e.data for e in events] == [None, {"a": [1, 2]}, {}]
    done, _ = feed_all([b"data: [DONE]\n\n"])
    assert done == [SseEvent(b"data: [DONE]\n\n", None)]
    broken, _ = feed_all([b"data: {not json\n\n", b"event: x\n\n"])
    assert [e.data for e in broken] == [None, None]


def test_an_event_is_yielded_as_soon_as_it_is_whole_and_not_before():
    splitter = SseSplitter()
    assert list(splitter.feed(b'data: {"a":1}\n')) == []
    assert list(splitter.feed(b"\n")) == [SseEvent(b'data: {"a":1}\n\n', {"a": 1})]
    assert list(splitter.feed(b'data: {"b"')) == []
    assert list(splitter.feed(b':2}\n\ndata: {"c":3}\n\ndata')) == [
        SseEvent(b'data: {"b":2}\n\n', {"b": 2}),
        SseEvent(b'data: {"c":3}\n\n', {"c": 3}),
    ]
    assert splitter.rest() == b"data"


def test_rest_returns_the_unterminated_tail_once():
    splitter = SseSplitter()
    events = list(splitter.feed(b'data: {"x":1}\n\ndata: {"partial": tru'))
    assert [e.data for e in events] == [{"x": 1}]
    assert splitter.rest() == b'data: {"partial": tru'
    assert splitter.rest() == b""
    assert list(splitter.feed(b"e}\n\n")) == [SseEvent(b"e}\n\n", None)]


def test_crlf_line_ends_are_normalised_when_fed_whole():
    crlf = sse(*ANTHROPIC_STREAM, newline="\r\n")
    assert b"\r\n" in crlf
    assert feed_all([crlf]) == feed_all([STREAMS["anthropic"]])


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(STREAMS)), cuts=st.lists(st.integers(0, 10**6), max_size=40), tail=st.binary())
def test_any_split_of_a_stream_yields_exactly_the_events_of_the_whole(name, cuts, tail):
    data = STREAMS[name] + tail.replace(b"\r", b"")  # and an unterminated tail, maybe
    assert feed_all(split_at(data, cuts)) == feed_all([data])


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, 10**6), max_size=30))
def test_byte_by_byte_or_in_any_chunks_the_same_events(cuts):
    data = STREAMS["openai_usage"]
    assert feed_all([bytes([b]) for b in data]) == feed_all([data]) == feed_all(split_at(data, cuts))


CRLF_STREAMS = {name: data.replace(b"\n", b"\r\n") for name, data in STREAMS.items()}
CUT_INSIDE_CRLF = CRLF_STREAMS["openai_usage"].index(b"\r\n\r\n") + 3  # after the \r of the first blank line


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(CRLF_STREAMS)), cuts=st.lists(st.integers(0, 10**6), max_size=40))
@example(name="openai_usage", cuts=[CUT_INSIDE_CRLF])
def test_crlf_stream_split_between_cr_and_lf_keeps_every_event(name, cuts):
    """A chunk may end between the CR and the LF of a line end: the pair is still one line end
    (normalising chunk by chunk once ran two events together and lost a usage chunk)."""
    data = CRLF_STREAMS[name]
    assert feed_all(split_at(data, cuts)) == feed_all([data])


# --- StreamUsage ---------------------------------------------------------------------------


def follow(api: str, stream: bytes, chunk_size: int = 37) -> StreamUsage:
    usage = StreamUsage(api)
    splitter = SseSplitter()
    for i in range(0, len(stream), chunk_size):
        for event in splitter.feed(stream[i : i + chunk_size]):
            usage.observe(event.data)
    return usage


def test_openai_stream_with_include_usage_takes_the_final_usage_chunk():
    usage = follow("openai", STREAMS["openai_usage"])
    assert usage.output_reported
    assert usage.final() == Tokens(input=2006 - 1920, output=300, cached=1920)


def test_openai_usage_null_on_content_chunks_is_not_a_report():
    stream = sse(*openai_stream(True)[:-2], "data: [DONE]")  # broke off before the usage chunk
    usage = follow("openai", stream)
    assert not usage.output_reported
    assert usage.final().output > 0 and usage.final().input == 0


def test_openai_stream_without_usage_counts_one_token_per_delta():
    stream = sse(*(openai_chunk([content(w)], include_usage=False) for w in WORDS))
    assert follow("openai", stream).final() == Tokens(output=len(WORDS))


def test_openai_stream_without_usage_counts_only_content_chunks():
    """The role-only first chunk and the empty finish_reason chunk are not output tokens."""
    usage = follow("openai", STREAMS["openai_no_usage"])
    assert usage.final() == Tokens(output=len(WORDS))


def test_openai_usage_reported_on_a_chunk_with_choices_is_taken_too():
    # some OpenAI-compatible upstreams put the usage on the last content chunk
    events = [openai_chunk([content(w)], include_usage=False) for w in WORDS[:-1]]
    events.append(openai_chunk([{**content(WORDS[-1]), "finish_reason": "stop"}], OPENAI_USAGE))
    assert follow("openai", sse(*events)).final() == Tokens(86, 300, 1920)


def test_openai_non_dict_events_are_ignored():
    usage = StreamUsage("openai")
    for data in (None, [], "x", 1):
        usage.observe(data)
    assert usage.final() == Tokens() and not usage.output_reported


@pytest.mark.parametrize(
    ("api", "data"),
    [("openai", {"choices": True}), ("openai", {"choices": 3}),
     ("anthropic", {"type": "message_start", "message": "x"}),
     ("responses", {"type": "response.completed", "response": [1]}),
     ("anthropic", {"type": ["message_delta"]}), ("responses", {"type": {}})],
)  # fmt: skip
def test_an_event_of_the_wrong_shape_is_no_report_rather_than_a_crash(api, data):
    """A crash would end the pump before the usage is stored: a stream answered 200 and not billed."""
    usage = StreamUsage(api)
    usage.observe(data)
    assert usage.final() == Tokens() and not usage.output_reported


@pytest.mark.parametrize("protocol", [MESSAGES, RESPONSES])
def test_an_event_whose_type_is_no_string_is_not_final_rather_than_a_crash(protocol):
    assert not protocol.is_final({"type": ["message_stop", "response.completed"]}, b"")


def test_anthropic_stream_message_start_then_message_delta():
    usage = follow("anthropic", STREAMS["anthropic"])
    assert usage.output_reported
    assert usage.final() == Tokens(input=472 + 2048, output=187, cached=8192)


def test_anthropic_usage_is_the_same_in_any_chunking():
    results = {follow("anthropic", STREAMS["anthropic"], size).final() for size in (1, 2, 7, 64, 10**6)}
    assert results == {Tokens(2520, 187, 8192)}


def test_anthropic_stream_with_no_usage_at_all_counts_content_deltas():
    usage = follow("anthropic", sse(*ANTHROPIC_DELTAS, anthropic_event("message_stop")))
    assert not usage.output_reported
    assert usage.final() == Tokens(output=len(WORDS))


def test_anthropic_stream_broken_after_message_start_bills_the_deltas_streamed():
    """Anthropic reports the output total only in message_delta; a stream that breaks off
    after message_start keeps its input and counts the content deltas as output (it used to
    bill the start's placeholder output of 1)."""
    usage = follow("anthropic", sse(*ANTHROPIC_BODY))
    assert usage.final().input == 2520
    assert usage.final().output >= len(WORDS)


def responses_event(kind: str, **fields) -> str:
    return anthropic_event(kind, sequence_number=0, **fields)  # the same named-event framing


RESPONSES_USAGE = {"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024}, "output_tokens": 3}
RESPONSES_DELTAS = [responses_event("response.output_text.delta", item_id="msg_1", delta=w) for w in WORDS]
RESPONSES_CREATED = responses_event(
    "response.created", response={"id": "resp_1", "status": "in_progress", "usage": None}
)


def test_responses_stream_takes_the_usage_of_its_final_response():
    for final in ("response.completed", "response.incomplete", "response.failed"):
        done = responses_event(final, response={"id": "resp_1", "usage": RESPONSES_USAGE})
        usage = follow("responses", sse(RESPONSES_CREATED, *RESPONSES_DELTAS, done))
        assert usage.output_reported and usage.final() == Tokens(input=176, output=3, cached=1024)


def test_responses_stream_broken_off_before_its_final_response_bills_the_deltas_streamed():
    arguments = responses_event("response.function_call_arguments.delta", item_id="fc_1", delta='{"a"')
    usage = follow("responses", sse(RESPONSES_CREATED, *RESPONSES_DELTAS, arguments))
    assert not usage.output_reported and usage.final() == Tokens(output=len(WORDS) + 1)


def test_responses_usage_reads_cached_tokens_from_input_tokens_details():
    assert from_openai(RESPONSES_USAGE) == Tokens(input=176, output=3, cached=1024)


# --- estimate_usd_micros -------------------------------------------------------------------


def estimate(model_id: str, body: dict, body_bytes: int = 4000) -> int:
    return estimate_usd_micros(CATALOG.models[model_id], body, body_bytes)


def test_estimate_is_input_from_the_body_size_plus_max_tokens_at_list_price():
    # gpt-4o: 2.5 USD / M prompt, 10 USD / M completion; 4000 bytes ~ 1000 tokens
    assert estimate("openai/gpt-4o", {"max_tokens": 100}, 4000) == 2500 + 1000
    assert estimate("openai/gpt-4o", {"max_completion_tokens": 100}, 4000) == 2500 + 1000
    assert estimate("openai/gpt-4o", {}, 4000) == 2500 + DEFAULT_MAX_OUTPUT * 10


@settings(max_examples=150, deadline=None)
@given(
    model_id=st.sampled_from(CHAT_MODELS),
    a=st.integers(1, 200_000),
    b=st.integers(1, 200_000),
    size=st.integers(0, 10**7),
)
def test_estimate_grows_with_max_tokens(model_id, a, b, size):
    low, high = sorted((a, b))
    assert estimate(model_id, {"max_tokens": low}, size) <= estimate(model_id, {"max_tokens": high}, size)
    if high - low >= 1000:  # a thousand tokens cost at least a micro-USD on every chat model
        assert estimate(model_id, {"max_tokens": low}, size) < estimate(model_id, {"max_tokens": high}, size)


@settings(max_examples=150, deadline=None)
@given(model_id=st.sampled_from(CHAT_MODELS), a=st.integers(0, 10**7), b=st.integers(0, 10**7))
def test_estimate_grows_with_the_body_size(model_id, a, b):
    small, large = sorted((a, b))
    body = {"max_tokens": 256}
    assert estimate(model_id, body, small) <= estimate(model_id, body, large)
    if large - small >= 4 * 40_000:
        assert estimate(model_id, body, small) < estimate(model_id, body, large)


@pytest.mark.parametrize("invalid", [None, 0, -1, -4096, "4096", 12.5, [], {}, "lots"])
def test_estimate_uses_the_default_when_max_tokens_is_absent_or_invalid(invalid):
    default = estimate("anthropic/claude-sonnet-4.5", {})
    assert default == estimate("anthropic/claude-sonnet-4.5", {"max_tokens": DEFAULT_MAX_OUTPUT})
    assert estimate("anthropic/claude-sonnet-4.5", {"max_tokens": invalid}) == default
    assert estimate("anthropic/claude-sonnet-4.5", {"max_completion_tokens": invalid}) == default


def test_estimate_does_not_take_max_tokens_true_as_one_token():
    """A JSON `true` is not a token count, though Python's bool is an int."""
    default = estimate("anthropic/claude-sonnet-4.5", {})
    assert estimate("anthropic/claude-sonnet-4.5", {"max_tokens": True}) == default


@pytest.mark.parametrize("model_id", IMAGE_MODELS)
def test_image_estimate_prices_n_images(model_id):
    model = CATALOG.models[model_id]
    one = estimate(model_id, {"prompt": "a red fox"}, 0)
    assert one == max(1, model.pico_prices[3] // 10**6)
    for n in (2, 4, 10):
        assert estimate(model_id, {"n": n}, 0) == max(1, n * model.pico_prices[3] // 10**6)
    assert estimate(model_id, {"n": 4, "max_tokens": 10**6}, 0) == estimate(model_id, {"n": 4}, 0)


@pytest.mark.parametrize("model_id", IMAGE_MODELS)
@pytest.mark.parametrize("invalid", [0, -3, 11, 1000, "2", 2.0, None, [2]])
def test_image_estimate_with_an_invalid_n_prices_one_image(model_id, invalid):
    assert estimate(model_id, {"n": invalid}, 800) == estimate(model_id, {}, 800) == estimate(model_id, {"n": 1}, 800)


def test_estimate_is_at_least_one_micro_usd_even_when_the_price_rounds_to_nothing():
    # gemma-3-12b: 0.1 USD / M completion; one token and an empty body is 0.1 micro-USD
    assert estimate("google/gemma-3-12b-it", {"max_tokens": 1}, 0) == 1


@settings(max_examples=200, deadline=None)
@given(
    model_id=st.sampled_from(sorted(CATALOG.models)),
    size=st.integers(0, 10**6),
    max_tokens=st.one_of(st.none(), st.integers(-10, 10**6), st.text(max_size=3)),
    n=st.one_of(st.none(), st.integers(-5, 20)),
)
def test_estimate_is_never_below_one(model_id, size, max_tokens, n):
    assert estimate(model_id, {"max_tokens": max_tokens, "n": n}, size) >= 1
