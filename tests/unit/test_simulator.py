"""The upstream simulator, through the official OpenAI and Anthropic SDKs and raw HTTP: deterministic
text, usage blocks consistent with it, the exact streaming shapes, errors in each API's own shape."""

import base64
import json
import time
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest

from services.simulator import text
from services.simulator.app import SimulatorService
from services.simulator.images import PNG
from services.simulator.settings import SimulatorSettings

MODEL = "sim-chat"
QUESTION = [{"role": "user", "content": "How many flows does a call cost?"}]


async def _serve(**overrides) -> SimulatorService:
    service = SimulatorService(SimulatorSettings.from_env({}, port=0, **overrides))
    await service.start()
    return service


@pytest.fixture(scope="module")
async def base() -> AsyncIterator[str]:
    service = await _serve(tokens_per_s=0)
    yield f"http://127.0.0.1:{service.port}"
    await service.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def oai(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0) as client:
        yield client


@pytest.fixture
async def claude(base: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=base, api_key="x", max_retries=0) as client:
        yield client


# --- the pure rules -------------------------------------------------------------------------


def test_prompt_tokens_are_words_plus_three_per_message() -> None:
    prompt = text.analyse("m", [["one two  three\nfour"], [], ["five", "six seven"]], ["five", "six seven"])
    assert prompt.tokens == 4 + 3 + 0 + 3 + 3 + 3
    assert prompt.cached == 0 and prompt.limit is None


def test_markers_in_the_last_user_message() -> None:
    pieces = ["a b c [[cached:4]] [[tokens:2]]"]
    prompt = text.analyse("m", [pieces], pieces)
    assert (prompt.tokens, prompt.cached, prompt.limit) == (5 + 3, 4, 2)
    assert text.completion_length(prompt, 10) == 2
    assert text.completion_length(prompt, 1) == 1
    capped = text.analyse("m", [["x [[cached:999]]"]], ["x [[cached:999]]"])
    assert capped.cached == capped.tokens == 5


def test_completion_is_deterministic_and_exactly_n_tokens() -> None:
    a = text.analyse("m", [["hello"]], ["hello"])
    b = text.analyse("m", [["hello"]], ["hello"])
    c = text.analyse("other", [["hello"]], ["hello"])
    assert a == b and a.start != c.start
    for start, n in [(a.start, 0), (a.start, 7), (text.CYCLE - 3, 10), (5, 2 * text.CYCLE + 11)]:
        whole = text.completion_text(start, n)
        assert len(whole.split()) == n
        assert whole == "".join(t.decode() for t in text.completion_tokens(start, n))
        assert all(w.isascii() and w.isalpha() for w in whole.split())


def test_settings_from_env() -> None:
    defaults = SimulatorSettings.from_env({})
    assert (defaults.host, defaults.port, defaults.tokens_per_s, defaults.first_token_ms) == (
        "127.0.0.1",
        8090,
        2000,
        0,
    )
    assert defaults.require_key == ""
    env = {
        "FLOWPLAN_HOST": "0.0.0.0",
        "FLOWPLAN_SIMULATOR_PORT": "9999",
        "FLOWPLAN_SIMULATOR_TOKENS_PER_S": "0",
        "FLOWPLAN_SIMULATOR_FIRST_TOKEN_MS": "250",
        "FLOWPLAN_SIMULATOR_REQUIRE_KEY": "sekrit",
    }
    s = SimulatorSettings.from_env(env)
    assert (s.host, s.port, s.tokens_per_s, s.first_token_ms, s.require_key) == ("0.0.0.0", 9999, 0, 250, "sekrit")
    with pytest.raises(ValueError):
        SimulatorSettings.from_env({"FLOWPLAN_SIMULATOR_TOKENS_PER_S": "-1"})


def test_png_is_valid() -> None:
    assert PNG.startswith(b"\x89PNG\r\n\x1a\n") and PNG.endswith(b"IEND\xaeB`\x82")


# --- OpenAI ---------------------------------------------------------------------------------


async def test_openai_non_stream(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8)
    assert reply.object == "chat.completion" and reply.model == MODEL and reply.id.startswith("chatcmpl-")
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.role == "assistant"
    assert len(choice.message.content.split()) == 8
    usage = reply.usage
    assert usage.completion_tokens == 8
    assert usage.prompt_tokens == 7 + 3
    assert usage.total_tokens == usage.prompt_tokens + 8
    assert usage.prompt_tokens_details.cached_tokens == 0
    again = await oai.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=8)
    assert again.choices[0].message.content == choice.message.content
    other = await oai.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, max_tokens=8)
    assert other.choices[0].message.content != choice.message.content


async def test_openai_default_max_tokens_parts_and_roles(oai: openai.AsyncOpenAI) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go"},
    ]
    reply = await oai.chat.completions.create(model=MODEL, messages=messages)
    assert text.NATURAL_MIN <= reply.usage.completion_tokens <= text.NATURAL_MAX
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens == (2 + 3 + 1 + 1) + 4 * 3


async def test_openai_stream_matches_non_stream(oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "Summarise the plan [[cached:5]]"}]
    plain = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=8)
    stream = await oai.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 8
    assert "".join(pieces) == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.model_dump() == plain.usage.model_dump()
    assert last.usage.prompt_tokens_details.cached_tokens == 5 and last.usage.completion_tokens == 8
    assert all(c.id == chunks[0].id for c in chunks)


async def test_openai_stream_without_usage_raw(base: str, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 3, "stream": True}
    async with http.post(f"{base}/v1/chat/completions", json=body) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        raw = await response.text()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert len(chunks) == 1 + 3 + 1
    assert all("usage" not in c and c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}


async def test_tokens_marker_ends_the_turn(oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic) -> None:
    messages = [{"role": "user", "content": "short answer please [[tokens:3]]"}]
    reply = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    assert reply.choices[0].finish_reason == "stop" and reply.usage.completion_tokens == 3
    message = await claude.messages.create(model=MODEL, messages=messages, max_tokens=10)
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 3
    assert message.content[0].text == reply.choices[0].message.content


async def test_replies_end_naturally_whatever_max_tokens(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    """Claude Code asks for 32,000 tokens a call: it gets a model-like reply, not 32,000 of filler."""
    lengths = set()
    for question in ("What is a Flow?", "Refactor this function", "hi", "Explain the 5-hour window"):
        messages = [{"role": "user", "content": question}]
        reply = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=32_000)
        message = await claude.messages.create(model=MODEL, messages=messages, max_tokens=16_000)
        n = reply.usage.completion_tokens
        assert text.NATURAL_MIN <= n <= text.NATURAL_MAX and reply.choices[0].finish_reason == "stop"
        assert message.stop_reason == "end_turn" and message.usage.output_tokens == n
        assert len(reply.choices[0].message.content.split()) == n
        again = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=32_000)
        assert again.choices[0].message.content == reply.choices[0].message.content
        lengths.add(n)
    assert len(lengths) > 1  # derived from the prompt, not one fixed length


async def test_tokens_marker_asks_for_an_exact_long_reply(oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "a long one [[tokens:500]]"}]
    long = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=500)
    assert long.usage.completion_tokens == 500 and long.choices[0].finish_reason == "length"
    longer = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=1000)
    assert longer.usage.completion_tokens == 500 and longer.choices[0].finish_reason == "stop"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}},
    },
}


async def test_tool_call_when_the_prompt_names_an_offered_tool(oai: openai.AsyncOpenAI) -> None:
    asked = [{"role": "user", "content": "Use get_weather for Paris"}]
    reply = await oai.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER], max_tokens=100)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "flowplan", "days": 1}
    assert reply.usage.completion_tokens == 1 + (len("get_weather") + len(call.function.arguments)) // 4

    exact = [{"role": "user", "content": 'get_weather please [[args:{"city": "Oslo"}]]'}]
    stream = await oai.chat.completions.create(
        model=MODEL, messages=exact, tools=[WEATHER], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert deltas[0].tool_calls[0].function.name == "get_weather"
    arguments = "".join(d.tool_calls[0].function.arguments for d in deltas if d.tool_calls)
    assert json.loads(arguments) == {"city": "Oslo"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == 1 + (len("get_weather") + len(arguments)) // 4

    # After the tool's result the turn ends in text; unnamed or refused tools get text too.
    result = [
        *asked,
        {
            "role": "assistant",
            "tool_calls": [{"id": call.id, "type": "function", "function": call.function.model_dump()}],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    answer = await oai.chat.completions.create(model=MODEL, messages=result, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content
    plain = await oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER])
    assert plain.choices[0].message.tool_calls is None
    refused = await oai.chat.completions.create(model=MODEL, messages=asked, tools=[WEATHER], tool_choice="none")
    assert refused.choices[0].message.tool_calls is None
    forced = await oai.chat.completions.create(model=MODEL, messages=QUESTION, tools=[WEATHER], tool_choice="required")
    assert forced.choices[0].message.tool_calls[0].function.name == "get_weather"


async def test_anthropic_tool_use_when_the_prompt_names_an_offered_tool(claude: anthropic.AsyncAnthropic) -> None:
    tool = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}  # type: ignore[index]
    asked = [{"role": "user", "content": 'Use get_weather [[args:{"city": "Oslo"}]]'}]
    message = await claude.messages.create(model=MODEL, max_tokens=100, messages=asked, tools=[tool])
    [block] = message.content
    assert message.stop_reason == "tool_use" and block.type == "tool_use" and block.id.startswith("toolu_")
    assert block.name == "get_weather" and block.input == {"city": "Oslo"}
    async with claude.messages.stream(model=MODEL, max_tokens=100, messages=asked, tools=[tool]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Oslo"}
    assert final.usage.output_tokens == message.usage.output_tokens == 1 + (11 + len('{"city":"Oslo"}')) // 4
    result = [
        *asked,
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]},
    ]
    answer = await claude.messages.create(model=MODEL, max_tokens=100, messages=result, tools=[tool])
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    forced = await claude.messages.create(
        model=MODEL, max_tokens=100, messages=QUESTION, tools=[tool], tool_choice={"type": "any"}
    )
    assert forced.stop_reason == "tool_use"


async def test_stop_sequences_end_the_reply_before_them(
    oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic
) -> None:
    messages = [{"role": "user", "content": "a long one [[tokens:200]]"}]
    whole = (await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=200)).choices[0].message
    text_ = whole.content
    # A word whose first occurrence starts a token, a few tokens in: the reply ends right before it.
    stop = next(w for w in text_.split()[3:] if text_.find(w) > 0 and text_[text_.find(w) - 1] == " ")
    before = text_[: text_.find(stop)]
    chat = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=200, stop=[stop])
    assert chat.choices[0].finish_reason == "stop" and chat.choices[0].message.content == before
    assert chat.usage.completion_tokens == len(before.split())
    message = await claude.messages.create(model=MODEL, messages=messages, max_tokens=200, stop_sequences=[stop])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == before and message.usage.output_tokens == len(before.split())
    async with claude.messages.stream(model=MODEL, messages=messages, max_tokens=200, stop_sequences=[stop]) as s:
        final = await s.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop
    assert final.content[0].text == message.content[0].text
    never = await oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=200, stop="zzz")
    assert never.usage.completion_tokens == 200


async def test_openai_models(oai: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in oai.models.list()]
    assert MODEL in models


# --- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_non_stream(claude: anthropic.AsyncAnthropic) -> None:
    messages = [{"role": "user", "content": "Explain windows [[cached:4]]"}]
    message = await claude.messages.create(model=MODEL, max_tokens=8, messages=messages)
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert len(message.content) == 1 and message.content[0].type == "text"
    assert len(message.content[0].text.split()) == 8
    prompt_tokens = 3 + 3
    assert message.usage.output_tokens == 8
    assert message.usage.cache_read_input_tokens == 4
    assert message.usage.input_tokens == prompt_tokens - 4
    assert message.usage.cache_creation_input_tokens == 0
    with_system = await claude.messages.create(
        model=MODEL, max_tokens=8, messages=messages, system=[{"type": "text", "text": "you are terse"}]
    )
    assert with_system.usage.input_tokens == prompt_tokens - 4 + 3 + 3
    assert with_system.content[0].text != message.content[0].text


async def test_anthropic_messages_stream_helper(claude: anthropic.AsyncAnthropic) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Stream it [[cached:2]]"}]}]
    plain = await claude.messages.create(model=MODEL, max_tokens=8, messages=messages, system="sys prompt")
    async with claude.messages.stream(model=MODEL, max_tokens=8, messages=messages, system="sys prompt") as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) == 8
    assert "".join(pieces) == plain.content[0].text == final.content[0].text
    assert final.stop_reason == "max_tokens"
    assert final.usage.model_dump() == plain.usage.model_dump()
    assert final.usage.output_tokens == 8 and final.usage.cache_read_input_tokens == 2


async def test_anthropic_create_stream_event_sequence(claude: anthropic.AsyncAnthropic) -> None:
    stream = await claude.messages.create(model=MODEL, max_tokens=4, messages=QUESTION, stream=True)
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0].message
    assert start.usage.input_tokens == 10 and start.usage.output_tokens == 1 and start.content == []
    assert start.stop_reason is None
    assert all(e.delta.type == "text_delta" and e.index == 0 for e in events[2:6])
    assert events[-2].delta.stop_reason == "max_tokens" and events[-2].usage.output_tokens == 4


async def test_anthropic_raw_stream_has_ping(base: str, http: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "max_tokens": 1, "messages": QUESTION, "stream": True}
    async with http.post(f"{base}/v1/messages", json=body) as response:
        raw = await response.text()
    names = [block.split("\n")[0].removeprefix("event: ") for block in raw.strip().split("\n\n")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n")
        assert json.loads(data.removeprefix("data: "))["type"] == name.removeprefix("event: ")


async def test_same_text_from_both_apis(oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic) -> None:
    chat = await oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=9)
    message = await claude.messages.create(model=MODEL, messages=QUESTION, max_tokens=9)
    assert chat.choices[0].message.content == message.content[0].text
    assert chat.usage.prompt_tokens == message.usage.input_tokens


# --- images ---------------------------------------------------------------------------------


async def test_images_b64(oai: openai.AsyncOpenAI) -> None:
    result = await oai.images.generate(model="gpt-image-1", prompt="a red fox in snow", n=2, size="1024x1024")
    assert len(result.data) == 2
    assert base64.b64decode(result.data[0].b64_json) == PNG
    assert result.usage.input_tokens == 5 and result.usage.output_tokens == 0 and result.usage.total_tokens == 5


async def test_images_url_served(oai: openai.AsyncOpenAI, http: aiohttp.ClientSession, base: str) -> None:
    result = await oai.images.generate(model="dall-e-3", prompt="a fox", response_format="url")
    assert len(result.data) == 1
    url = result.data[0].url
    assert url.startswith(f"{base}/images/") and url.endswith(".png")
    async with http.get(url) as response:
        assert response.status == 200 and response.content_type == "image/png"
        assert await response.read() == PNG


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": []}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
            "messages[0].content[0].text",
        ),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
    ],
)
async def test_openai_400_shape(base: str, http: aiohttp.ClientSession, body: bytes, param: str | None) -> None:
    async with http.post(f"{base}/v1/chat/completions", data=body) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{not json", "JSON"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "x"}]}', "max_tokens: Field required"),
        (b'{"model": "m", "max_tokens": 5}', "messages: Field required"),
        (b'{"model": "m", "max_tokens": 5, "messages": []}', "messages"),
        (b'{"model": "m", "max_tokens": 5, "messages": [{"role": "tool", "content": "x"}]}', "messages.0.role"),
        (b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "system": 3}', "system"),
        (b'{"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
    ],
)
async def test_anthropic_400_shape(base: str, http: aiohttp.ClientSession, body: bytes, words: str) -> None:
    async with http.post(f"{base}/v1/messages", data=body) as response:
        assert response.status == 400
        payload = await response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert words in payload["error"]["message"]


async def test_sdk_errors(oai: openai.AsyncOpenAI, claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(model=MODEL, messages=[], max_tokens=3)
    assert caught.value.param == "messages"
    with pytest.raises(anthropic.BadRequestError) as failed:
        await claude.messages.create(model=MODEL, messages=[], max_tokens=3)
    assert failed.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        await oai.images.generate(prompt="x", n=0)


async def test_required_key() -> None:
    service = await _serve(require_key="sekrit", tokens_per_s=0)
    base = f"http://127.0.0.1:{service.port}"
    try:
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as caught:
                await bad.chat.completions.create(model=MODEL, messages=QUESTION)
            assert caught.value.code == "invalid_api_key"
        async with anthropic.AsyncAnthropic(base_url=base, api_key="wrong", max_retries=0) as bad_claude:
            with pytest.raises(anthropic.AuthenticationError) as failed:
                await bad_claude.messages.create(model=MODEL, messages=QUESTION, max_tokens=1)
            assert failed.value.body["error"]["type"] == "authentication_error"
        async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sekrit", max_retries=0) as good:
            assert (await good.chat.completions.create(model=MODEL, messages=QUESTION)).usage.completion_tokens > 0
        async with anthropic.AsyncAnthropic(base_url=base, api_key="sekrit", max_retries=0) as good_claude:
            assert (await good_claude.messages.create(model=MODEL, messages=QUESTION, max_tokens=2)).content
    finally:
        await service.stop()


async def test_body_too_large() -> None:
    service = await _serve(max_body_bytes=1000, tokens_per_s=0)
    body = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "word " * 500}]}
    try:
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{service.port}"
            async with http.post(f"{base}/v1/chat/completions", json=body) as response:
                assert response.status == 413
                assert (await response.json())["error"]["type"] == "invalid_request_error"
            async with http.post(f"{base}/v1/messages", json=body) as response:
                assert response.status == 413
                assert (await response.json())["error"]["type"] == "request_too_large"
    finally:
        await service.stop()


async def test_long_unpaced_stream(oai: openai.AsyncOpenAI) -> None:
    long = [{"role": "user", "content": "a long one [[tokens:5000]]"}]
    stream = await oai.chat.completions.create(model=MODEL, messages=long, max_tokens=5000, stream=True)
    pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 5000 and len("".join(pieces).split()) == 5000


async def test_healthz(base: str, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{base}/healthz") as response:
        assert response.status == 200 and await response.json() == {"ok": True}


# --- pacing ---------------------------------------------------------------------------------


async def test_stream_is_paced() -> None:
    service = await _serve(tokens_per_s=200, first_token_ms=80)
    exact = [{"role": "user", "content": "[[tokens:21]]"}]
    body = {"model": MODEL, "messages": exact, "max_tokens": 21, "stream": True}
    try:
        async with aiohttp.ClientSession() as http:
            began = time.monotonic()
            arrivals = []
            async with http.post(f"http://127.0.0.1:{service.port}/v1/chat/completions", json=body) as response:
                async for line in response.content:
                    if b'"content":"' in line and b'"content":""' not in line:
                        arrivals.append(time.monotonic() - began)
            plain = await http.post(
                f"http://127.0.0.1:{service.port}/v1/chat/completions", json={**body, "stream": False}
            )
            non_stream_s = time.monotonic() - began - arrivals[-1]
            assert (await plain.json())["usage"]["completion_tokens"] == 21
    finally:
        await service.stop()
    assert len(arrivals) == 21
    assert arrivals[0] >= 0.075  # the first-token delay
    assert arrivals[-1] - arrivals[0] >= 0.09  # 20 more tokens at 200/s: 0.1 s
    assert arrivals[-1] < 2.0
    assert non_stream_s >= 0.17  # a non-streamed answer waits as long


# --- Responses, and each vendor's protocols ---------------------------------------------------

GPT = "openai/gpt-5-mini"
CLAUDE = "anthropic/claude-sonnet-4.5"
DEEPSEEK = "deepseek/deepseek-chat"
WEATHER_FUNCTION = {
    "type": "function", "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}  # fmt: skip


async def test_responses_answer_is_the_chat_answer_with_its_usage(oai: openai.AsyncOpenAI) -> None:
    prompt = "Summarise event sourcing [[cached:3]]"
    answer = await oai.responses.create(model=GPT, input=prompt, instructions="Be brief.")
    chat = await oai.chat.completions.create(
        model=GPT, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]
    )
    assert answer.status == "completed" and answer.output_text == chat.choices[0].message.content
    assert answer.usage is not None and chat.usage is not None
    assert (
        answer.usage.input_tokens == chat.usage.prompt_tokens and answer.usage.input_tokens_details.cached_tokens == 3
    )
    assert answer.usage.output_tokens == chat.usage.completion_tokens == len(answer.output_text.split())
    cut = await oai.responses.create(model=GPT, input="long [[tokens:50]]", max_output_tokens=20)
    assert cut.status == "incomplete" and cut.incomplete_details is not None
    assert cut.incomplete_details.reason == "max_output_tokens" and cut.usage and cut.usage.output_tokens == 20


async def test_responses_stream_is_the_event_sequence_the_sdk_accumulates(oai: openai.AsyncOpenAI) -> None:
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Tell me about windows [[tokens:12]]"}]}]
    whole = await oai.responses.create(model=GPT, input=items)
    async with oai.responses.stream(model=GPT, input=items) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 12
    assert final.output_text == whole.output_text and final.usage == whole.usage


async def test_responses_function_call_round_trip(oai: openai.AsyncOpenAI) -> None:
    ask = 'Use get_weather please [[args:{"city": "Paris"}]]'
    called = await oai.responses.create(model=GPT, input=ask, tools=[WEATHER_FUNCTION])
    [call] = called.output
    assert (
        call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    )
    async with oai.responses.stream(model=GPT, input=ask, tools=[WEATHER_FUNCTION]) as stream:
        deltas = [e.delta async for e in stream if e.type == "response.function_call_arguments.delta"]
        streamed = await stream.get_final_response()
    assert "".join(deltas) == call.arguments and streamed.output[0].type == "function_call"
    follow_up = [
        {"role": "user", "content": ask},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"},
    ]
    answer = await oai.responses.create(model=GPT, input=follow_up, tools=[WEATHER_FUNCTION])
    assert answer.output[0].type == "message" and answer.output_text


async def test_each_vendor_answers_only_its_own_protocols(base: str, http: aiohttp.ClientSession) -> None:
    question = [{"role": "user", "content": "hi"}]
    chat = {"messages": question, "max_tokens": 8}
    messages = {"messages": question, "max_tokens": 8}
    calls = {
        "/v1/chat/completions": chat, "/v1/responses": {"input": "hi"}, "/v1/messages": messages,
        "/v1/messages/count_tokens": {"messages": question}, "/v1/images/generations": {"prompt": "a cat"},
    }  # fmt: skip
    spoken = {
        GPT: {"/v1/chat/completions", "/v1/responses", "/v1/images/generations"},
        CLAUDE: {"/v1/messages", "/v1/messages/count_tokens"},
        DEEPSEEK: {"/v1/chat/completions", "/v1/images/generations"},
        MODEL: set(calls),  # a bare model name: every protocol, as before
    }
    for model, paths in spoken.items():
        for path, body in calls.items():
            async with http.post(base + path, json={**body, "model": model}) as response:
                refusal = await response.json()
            if path in paths:
                assert response.status == 200, (model, path, refusal)
            elif path.startswith("/v1/messages"):  # as Anthropic refuses a model it does not serve
                assert response.status == 404 and refusal["error"] == {
                    "type": "not_found_error",
                    "message": f"model: {model}",
                }
            else:  # as OpenAI does
                assert response.status == 404 and refusal["error"]["code"] == "model_not_found", (model, path)
            async with http.post(f"{base}/any{path}", json={**body, "model": model}) as anywhere:
                assert anywhere.status == 200, (model, path)  # an aggregator's endpoint serves every model
