"""Protocol translation through the official SDKs: each vendor's upstream speaks only one
protocol (FLOWPLAN_UPSTREAMS `protocols`: deepseek's chat, Anthropic's messages, OpenAI's only
Responses here), so the anthropic SDK on a chat model, the openai SDK on a Claude model and both
on a Responses-only model (and the Responses API on the others, here and in test_responses.py)
are translated both ways: text, tool calls, stop reasons, usage, streamed and not, and metered
exactly once from the upstream's own usage."""

import json
from collections.abc import AsyncIterator

import pytest

from tests.e2e.conftest import FREE_MODEL, PRO_CLAUDE, claude, metered, oai, pro_account
from tests.stack import Stack

pytestmark = pytest.mark.connected
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ASK_TOOL = 'Use get_weather please [[args:{"city": "Paris"}]]'


GPT = "openai/gpt-5-mini"
"""Its upstream speaks only the Responses API in this module."""


def one_protocol_each(stack: Stack) -> dict[str, dict[str, object]]:
    simulator = f"http://127.0.0.1:{stack.settings.simulator_port}"
    return {
        "default": {"url": simulator, "protocols": ["chat"]},
        "anthropic": {"url": simulator, "protocols": ["messages"]},
        "openai": {"url": simulator, "protocols": ["responses"]},
    }


@pytest.fixture(scope="module")
async def vendors(stack: Stack) -> AsyncIterator[Stack]:
    """The stack's gateway, restarted with every vendor's upstream speaking one protocol."""
    stack.gateway.stop()
    stack.gateway.start({"FLOWPLAN_UPSTREAMS": json.dumps(one_protocol_each(stack))})
    yield stack
    stack.gateway.stop()
    stack.gateway.start()


async def test_anthropic_sdk_on_a_chat_upstream(vendors: Stack) -> None:
    account = await vendors.create_account()
    client = claude(vendors, account["key"])
    question = [{"role": "user", "content": "Explain the window [[cached:2]]"}]
    message = await client.messages.create(model=FREE_MODEL, max_tokens=500, system="Be brief.", messages=question)
    chat = await oai(vendors, account["key"]).chat.completions.create(
        model=FREE_MODEL, max_tokens=500, messages=[{"role": "system", "content": "Be brief."}, *question]
    )
    assert chat.usage is not None and message.type == "message" and message.id.startswith("msg_")
    assert message.content[0].type == "text" and message.content[0].text == chat.choices[0].message.content
    assert message.stop_reason == "end_turn" and message.model == FREE_MODEL
    assert message.usage.input_tokens == chat.usage.prompt_tokens - 2 and message.usage.cache_read_input_tokens == 2
    assert message.usage.output_tokens == chat.usage.completion_tokens
    async with client.messages.stream(model=FREE_MODEL, max_tokens=500, system="Be brief.", messages=question) as s:
        text = "".join([piece async for piece in s.text_stream])
        final = await s.get_final_message()
    assert text == message.content[0].text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == message.usage.output_tokens
    assert final.usage.cache_read_input_tokens == 2
    cut = await client.messages.create(model=FREE_MODEL, max_tokens=5, messages=question)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 5
    events = await metered(vendors, account["key"], 4)
    assert sorted(e["output_tokens"] for e in events) == sorted([5] + [message.usage.output_tokens] * 3)
    assert {e["cached_tokens"] for e in events} == {2}


async def test_anthropic_sdk_tool_use_round_trip_on_a_chat_upstream(vendors: Stack) -> None:
    account = await vendors.create_account()
    client = claude(vendors, account["key"])
    tools = [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA}]
    asked = [{"role": "user", "content": ASK_TOOL}]
    message = await client.messages.create(model=FREE_MODEL, max_tokens=200, messages=asked, tools=tools)
    [use] = message.content
    assert message.stop_reason == "tool_use" and use.type == "tool_use"
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id
    async with client.messages.stream(model=FREE_MODEL, max_tokens=200, messages=asked, tools=tools) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].input == {"city": "Paris"}
    answered = [
        *asked,
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]
    reply = await client.messages.create(model=FREE_MODEL, max_tokens=200, messages=answered, tools=tools)
    assert reply.stop_reason == "end_turn" and reply.content[0].type == "text"
    events = await metered(vendors, account["key"], 3)
    assert len(events) == 3


async def test_openai_sdk_on_a_messages_upstream(vendors: Stack) -> None:
    account = await pro_account(vendors)
    question = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain GCRA [[cached:1]]"}]
    chat = await oai(vendors, account["key"]).chat.completions.create(
        model=PRO_CLAUDE, max_tokens=500, messages=question
    )
    message = await claude(vendors, account["key"]).messages.create(
        model=PRO_CLAUDE, max_tokens=500, system="Be brief.", messages=question[1:]
    )
    assert chat.object == "chat.completion" and chat.model == PRO_CLAUDE and chat.usage is not None
    assert chat.choices[0].message.content == message.content[0].text
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.prompt_tokens == message.usage.input_tokens + 1
    assert chat.usage.prompt_tokens_details is not None and chat.usage.prompt_tokens_details.cached_tokens == 1
    assert chat.usage.completion_tokens == message.usage.output_tokens
    stream = await oai(vendors, account["key"]).chat.completions.create(
        model=PRO_CLAUDE, max_tokens=500, messages=question, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    plain = await oai(vendors, account["key"]).chat.completions.create(
        model=PRO_CLAUDE, max_tokens=500, messages=question, stream=True
    )
    assert all([c.usage is None async for c in plain])  # no usage chunk unless asked for
    events = await metered(vendors, account["key"], 4)
    assert {e["output_tokens"] for e in events} == {chat.usage.completion_tokens}
    assert {e["cached_tokens"] for e in events} == {1}


async def test_openai_sdk_tool_call_round_trip_on_a_messages_upstream(vendors: Stack) -> None:
    account = await pro_account(vendors)
    client = oai(vendors, account["key"])
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
    asked = [{"role": "user", "content": ASK_TOOL}]
    chat = await client.chat.completions.create(model=PRO_CLAUDE, messages=asked, tools=tools)  # type: ignore[arg-type]
    choice = chat.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    stream = await client.chat.completions.create(model=PRO_CLAUDE, messages=asked, tools=tools, stream=True)  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    opened = [d.tool_calls[0] for d in deltas if d.tool_calls and d.tool_calls[0].id]
    assert [o.function.name for o in opened if o.function] == ["get_weather"]
    arguments = "".join(
        d.tool_calls[0].function.arguments or "" for d in deltas if d.tool_calls and d.tool_calls[0].function
    )
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    answered = [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    reply = await client.chat.completions.create(model=PRO_CLAUDE, messages=answered, tools=tools)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content
    events = await metered(vendors, account["key"], 3)
    assert len(events) == 3 and all(e["model"] == PRO_CLAUDE for e in events)


async def test_responses_api_on_a_messages_upstream_codex_on_claude(vendors: Stack) -> None:
    """Responses -> chat -> messages and back, streamed and not, with a function tool."""
    account = await pro_account(vendors)
    client = oai(vendors, account["key"])
    answer = await client.responses.create(
        model=PRO_CLAUDE, input="Explain GCRA [[cached:1]]", instructions="Be brief.", max_output_tokens=500
    )
    message = await claude(vendors, account["key"]).messages.create(
        model=PRO_CLAUDE,
        max_tokens=500,
        system="Be brief.",
        messages=[{"role": "user", "content": "Explain GCRA [[cached:1]]"}],
    )
    assert answer.status == "completed" and answer.output_text == message.content[0].text
    assert answer.usage is not None and answer.usage.input_tokens_details.cached_tokens == 1
    assert answer.usage.input_tokens == message.usage.input_tokens + 1
    assert answer.usage.output_tokens == message.usage.output_tokens
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}
    stream = await client.responses.create(model=PRO_CLAUDE, input=ASK_TOOL, tools=[tool], stream=True)  # type: ignore[list-item]
    events = [event async for event in stream]
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(arguments) == {"city": "Paris"} and events[-1].type == "response.completed"
    [call] = [item for item in events[-1].response.output if item.type == "function_call"]
    assert call.name == "get_weather" and events[-1].response.usage.output_tokens > 0
    follow_up = [
        {"role": "user", "content": ASK_TOOL},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ]
    done = await client.responses.create(model=PRO_CLAUDE, input=follow_up, tools=[tool])  # type: ignore[list-item]
    assert done.status == "completed" and done.output_text
    events_metered = await metered(vendors, account["key"], 4)
    assert len(events_metered) == 4 and all(e["model"] == PRO_CLAUDE for e in events_metered)


async def test_openai_sdk_on_a_responses_upstream(vendors: Stack) -> None:
    """chat -> Responses and back, streamed and not, with a tool call round trip."""
    account = await pro_account(vendors)
    client = oai(vendors, account["key"])
    question = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Explain GCRA [[cached:1]]"}]
    chat = await client.chat.completions.create(model=GPT, max_tokens=500, messages=question)  # type: ignore[arg-type]
    answer = await client.responses.create(  # passed through: the upstream's own answer to compare with
        model=GPT, instructions="Be brief.", input="Explain GCRA [[cached:1]]", max_output_tokens=500
    )
    assert chat.object == "chat.completion" and chat.model == GPT and chat.usage and answer.usage
    assert chat.choices[0].message.content == answer.output_text and chat.choices[0].finish_reason == "stop"
    assert chat.usage.prompt_tokens == answer.usage.input_tokens and chat.usage.prompt_tokens_details
    assert chat.usage.prompt_tokens_details.cached_tokens == 1
    assert chat.usage.completion_tokens == answer.usage.output_tokens
    stream = await client.chat.completions.create(
        model=GPT,
        max_tokens=500,
        messages=question,
        stream=True,
        stream_options={"include_usage": True},  # type: ignore[arg-type]
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer.output_text
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == answer.usage.output_tokens
    cut = await client.chat.completions.create(
        model=GPT, max_tokens=20, messages=[{"role": "user", "content": "on and on [[tokens:50]]"}]
    )
    assert cut.choices[0].finish_reason == "length" and cut.usage and cut.usage.completion_tokens == 20
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}]
    asked = [{"role": "user", "content": ASK_TOOL}]
    called = await client.chat.completions.create(model=GPT, messages=asked, tools=tools)  # type: ignore[arg-type]
    assert called.choices[0].finish_reason == "tool_calls" and called.choices[0].message.tool_calls
    [call] = called.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    stream = await client.chat.completions.create(model=GPT, messages=asked, tools=tools, stream=True)  # type: ignore[arg-type]
    deltas = [c.choices[0] async for c in stream if c.choices]
    arguments = "".join(
        d.delta.tool_calls[0].function.arguments or ""
        for d in deltas
        if d.delta.tool_calls and d.delta.tool_calls[0].function
    )
    assert json.loads(arguments) == {"city": "Paris"} and deltas[-1].finish_reason == "tool_calls"
    answered = [
        *asked,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    reply = await client.chat.completions.create(model=GPT, messages=answered, tools=tools)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content
    events = await metered(vendors, account["key"], 7)
    assert len(events) == 7 and all(e["model"] == GPT for e in events)
    assert sorted(e["output_tokens"] for e in events if e["cached_tokens"] == 1) == [answer.usage.output_tokens] * 3
    assert called.usage and sum(e["output_tokens"] == called.usage.completion_tokens for e in events) >= 2


async def test_anthropic_sdk_on_a_responses_upstream(vendors: Stack) -> None:
    """messages -> chat -> Responses and back, streamed and not, with a tool use round trip."""
    account = await pro_account(vendors)
    client = claude(vendors, account["key"])
    question = [{"role": "user", "content": "Explain GCRA [[cached:1]]"}]
    message = await client.messages.create(model=GPT, max_tokens=500, system="Be brief.", messages=question)
    answer = await oai(vendors, account["key"]).responses.create(
        model=GPT, instructions="Be brief.", input="Explain GCRA [[cached:1]]", max_output_tokens=500
    )
    assert answer.usage and message.type == "message" and message.model == GPT
    assert message.content[0].type == "text" and message.content[0].text == answer.output_text
    assert message.stop_reason == "end_turn" and message.usage.cache_read_input_tokens == 1
    assert message.usage.input_tokens == answer.usage.input_tokens - 1
    assert message.usage.output_tokens == answer.usage.output_tokens
    async with client.messages.stream(model=GPT, max_tokens=500, system="Be brief.", messages=question) as s:
        text = "".join([piece async for piece in s.text_stream])
        final = await s.get_final_message()
    assert text == answer.output_text and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == answer.usage.output_tokens
    tools = [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER_SCHEMA}]
    asked = [{"role": "user", "content": ASK_TOOL}]
    used = await client.messages.create(model=GPT, max_tokens=200, messages=asked, tools=tools)  # type: ignore[arg-type]
    [use] = used.content
    assert used.stop_reason == "tool_use" and use.type == "tool_use" and use.input == {"city": "Paris"}
    async with client.messages.stream(model=GPT, max_tokens=200, messages=asked, tools=tools) as stream:  # type: ignore[arg-type]
        streamed = await stream.get_final_message()
    assert streamed.stop_reason == "tool_use" and streamed.content[0].input == {"city": "Paris"}  # type: ignore[union-attr]
    answered = [
        *asked,
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]
    reply = await client.messages.create(model=GPT, max_tokens=200, messages=answered, tools=tools)  # type: ignore[arg-type]
    assert reply.stop_reason == "end_turn" and reply.content[0].type == "text"
    events = await metered(vendors, account["key"], 6)
    assert len(events) == 6 and all(e["model"] == GPT for e in events)
    assert sorted(e["output_tokens"] for e in events if e["cached_tokens"] == 1) == [message.usage.output_tokens] * 3
    assert sum(e["output_tokens"] == used.usage.output_tokens for e in events) >= 2


async def test_a_claude_model_behind_a_chat_only_upstream(vendors: Stack) -> None:
    """count_tokens is estimated when the model's upstream does not speak messages, and the
    anthropic SDK's calls are translated to chat even for a Claude model."""
    simulator = f"http://127.0.0.1:{vendors.settings.simulator_port}"
    aggregator = f"{simulator}/any"  # one chat endpoint serving every vendor's models
    everything_chat = {"default": {"url": aggregator, "protocols": ["chat"]}}
    vendors.gateway.stop()
    vendors.gateway.start({"FLOWPLAN_UPSTREAMS": json.dumps(everything_chat)})
    try:
        account = await pro_account(vendors)
        client = claude(vendors, account["key"])
        question = [{"role": "user", "content": "Count me"}]
        raw = await client.messages.with_raw_response.count_tokens(model=PRO_CLAUDE, messages=question)
        assert raw.headers["x-flowplan-token-count"] == "estimate"
        message = await client.messages.create(model=PRO_CLAUDE, max_tokens=100, messages=question)
        chat = await oai(vendors, account["key"]).chat.completions.create(
            model=PRO_CLAUDE, max_tokens=100, messages=question
        )
        assert message.content[0].text == chat.choices[0].message.content and message.stop_reason == "end_turn"
    finally:
        vendors.gateway.stop()
        vendors.gateway.start({"FLOWPLAN_UPSTREAMS": json.dumps(one_protocol_each(vendors))})
