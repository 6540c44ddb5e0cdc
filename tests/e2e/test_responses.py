"""`POST /v1/responses` (the OpenAI Responses API, what Codex speaks) through the official openai
SDK: translated to chat for an upstream that does not speak it (deepseek's), answered and
streamed in the Responses shapes, billed from the usage it reports like any call (same admission,
headers and error shapes); passed through as it is to one that does (OpenAI's), metered from
the Responses usage (`response.completed` when streamed)."""

import asyncio
import json

import aiohttp
import openai
import pytest

from libs.pricing.money import MICRO
from tests.e2e.conftest import FREE_MODEL, flows_of, metered, oai, pro_account
from tests.stack import Stack

pytestmark = pytest.mark.connected
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


GPT = "openai/gpt-5-mini"
"""A Pro model whose upstream (the simulator as OpenAI) speaks Responses: passed through."""


def billed(event: dict, model: str = FREE_MODEL) -> int:
    return flows_of(model, event["input_tokens"], event["output_tokens"], event["cached_tokens"])


async def test_text_answer_is_the_chat_answer_and_billed_from_its_usage(stack: Stack) -> None:
    account = await stack.create_account()
    client = oai(stack, account["key"])
    prompt = "Summarise event sourcing [[cached:3]]"
    raw = await client.responses.with_raw_response.create(
        model=FREE_MODEL, input=prompt, instructions="Be brief.", max_output_tokens=500
    )
    answer = raw.parse()
    assert raw.headers["x-flowplan-billing-mode"] == "subscription" and "x-flowplan-flows-remaining" in raw.headers
    assert answer.object == "response" and answer.status == "completed" and answer.id.startswith("resp_")
    assert answer.model == FREE_MODEL and answer.instructions == "Be brief."
    chat = await client.chat.completions.create(
        model=FREE_MODEL, max_tokens=500,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}],
    )  # fmt: skip
    assert answer.output_text == chat.choices[0].message.content
    assert chat.usage is not None and answer.usage is not None
    assert answer.usage.input_tokens == chat.usage.prompt_tokens
    assert answer.usage.input_tokens_details.cached_tokens == 3
    assert answer.usage.output_tokens == chat.usage.completion_tokens
    events = await metered(stack, account["key"], 2)
    assert len(events) == 2 and events[0]["input_tokens"] == events[1]["input_tokens"]
    assert [e["flows"] for e in events] == [billed(events[0]) / MICRO] * 2
    assert events[0]["cached_tokens"] == 3 and events[0]["output_tokens"] == answer.usage.output_tokens


async def test_streamed_answer_has_the_responses_events_and_the_billed_usage(stack: Stack) -> None:
    account = await stack.create_account()
    client = oai(stack, account["key"])
    items = [{"role": "user", "content": [{"type": "input_text", "text": "Tell me about windows [[tokens:40]]"}]}]
    whole = await client.responses.create(model=FREE_MODEL, input=items)
    stream = await client.responses.create(model=FREE_MODEL, input=items, stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 40
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text == whole.output_text == final.output_text and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 40
    async with client.responses.stream(model=FREE_MODEL, input=items) as helper:  # the SDK's own accumulator
        helped = await helper.get_final_response()
    assert helped.output_text == text
    used = await metered(stack, account["key"], 3)
    assert {e["output_tokens"] for e in used} == {40}
    assert {e["input_tokens"] + e["cached_tokens"] for e in used} == {final.usage.input_tokens}


async def test_function_tool_call_round_trip_streamed_and_not(stack: Stack) -> None:
    account = await stack.create_account()
    client = oai(stack, account["key"])
    ask = 'What is the weather? Use get_weather [[args:{"city": "Paris"}]]'
    called = await client.responses.create(model=FREE_MODEL, input=ask, tools=[WEATHER], tool_choice="auto")
    [call] = [item for item in called.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    stream = await client.responses.create(model=FREE_MODEL, input=ask, tools=[WEATHER], stream=True)
    events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == {"city": "Paris"}
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == deltas and events[-1].type == "response.completed"
    assert [item.name for item in events[-1].response.output if item.type == "function_call"] == ["get_weather"]
    # The tool's result goes back as items; the model answers in text and ends its turn.
    follow_up = [
        {"role": "user", "content": ask},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
    ]
    answer = await client.responses.create(model=FREE_MODEL, input=follow_up, tools=[WEATHER])
    assert answer.status == "completed" and answer.output_text
    assert not [item for item in answer.output if item.type == "function_call"]
    used = await metered(stack, account["key"], 3)
    assert len(used) == 3 and all(e["output_tokens"] > 0 for e in used)


async def test_max_output_tokens_cuts_the_answer_and_says_so(stack: Stack) -> None:
    account = await stack.create_account()
    answer = await oai(stack, account["key"]).responses.create(
        model=FREE_MODEL, input="a long one [[tokens:50]]", max_output_tokens=20
    )
    assert answer.status == "incomplete" and answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens"
    assert answer.usage is not None and answer.usage.output_tokens == 20


async def test_refusals_are_openai_errors_naming_the_field(stack: Stack) -> None:
    account = await stack.create_account()
    client = oai(stack, account["key"])
    with pytest.raises(openai.BadRequestError) as previous:
        await client.responses.create(model=FREE_MODEL, input="hi", previous_response_id="resp_123")
    assert previous.value.param == "previous_response_id" and "stores no responses" in previous.value.message
    with pytest.raises(openai.BadRequestError) as stored:
        await client.responses.create(model=FREE_MODEL, input="hi", store=True)
    assert stored.value.param == "store"
    with pytest.raises(openai.BadRequestError) as bad_item:
        await client.responses.create(model=FREE_MODEL, input=[{"type": "computer_call_output", "call_id": "x"}])
    assert bad_item.value.param == "input[0].type"
    with pytest.raises(openai.BadRequestError) as bad_tool:
        await client.responses.create(model=FREE_MODEL, input="hi", tools=[{"type": "custom", "name": "patch"}])
    assert bad_tool.value.param == "tools[0]"
    with pytest.raises(openai.BadRequestError) as no_input:
        await client.responses.create(model=FREE_MODEL, input=[])
    assert no_input.value.param == "input"
    with pytest.raises(openai.AuthenticationError):
        await oai(stack, "sk-ss-v1-nope").responses.create(model=FREE_MODEL, input="hi")
    with pytest.raises(openai.PermissionDeniedError) as not_in_plan:
        await client.responses.create(model="anthropic/claude-sonnet-4.5", input="hi")
    assert not_in_plan.value.code == "model_not_in_plan"
    status, body = await stack.http("GET", "/v1/account/usage/events?limit=10", token=account["key"])
    assert status == 200 and body["data"] == []  # nothing refused was billed


async def test_a_client_hanging_up_mid_stream_is_billed_for_the_whole_answer(stack: Stack) -> None:
    account = await stack.create_account()
    body = {"model": FREE_MODEL, "input": "go on [[tokens:3000]]", "max_output_tokens": 3000, "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{stack.gateway_url}/v1/responses", json=body, headers={"Authorization": f"Bearer {account['key']}"}
        )
        assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
        first = await response.content.readline()
        assert first == b"event: response.created\n"
        response.close()  # hang up ~1.5 s before the upstream is done
    await asyncio.sleep(0.1)
    [event] = await metered(stack, account["key"], 1)
    assert event["output_tokens"] == 3000  # the upstream generated (and billed) on


# -- passed through to an upstream that speaks Responses -------------------------------------------


async def test_passed_through_answers_are_the_upstreams_and_billed_from_their_usage(stack: Stack) -> None:
    account = await pro_account(stack)
    client = oai(stack, account["key"])
    prompt = "Summarise event sourcing [[cached:3]] [[tokens:30]]"
    raw = await client.responses.with_raw_response.create(model=GPT, input=prompt, instructions="Be brief.")
    answer = raw.parse()
    assert raw.headers["x-flowplan-billing-mode"] == "subscription" and "x-flowplan-flows-remaining" in raw.headers
    # The upstream's own Response (its id, not one the gateway makes when it translates).
    assert answer.id.startswith("resp_") and not answer.id.startswith(
        "resp_" + raw.headers["x-flowplan-request-id"][3:]
    )
    assert answer.status == "completed" and answer.usage is not None and answer.usage.output_tokens == 30
    stream = await client.responses.create(model=GPT, input=prompt, instructions="Be brief.", stream=True)
    events = [event async for event in stream]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == answer.output_text
    assert events[-1].response.usage == answer.usage
    used = await metered(stack, account["key"], 2)
    assert {(e["input_tokens"], e["cached_tokens"], e["output_tokens"]) for e in used} == {
        (answer.usage.input_tokens - 3, 3, 30)
    }
    assert [e["flows"] for e in used] == [billed(used[0], GPT) / MICRO] * 2 and used[0]["model"] == GPT


async def test_passed_through_tool_calls_and_hang_ups_are_billed(stack: Stack) -> None:
    account = await pro_account(stack)
    client = oai(stack, account["key"])
    ask = 'What is the weather? Use get_weather [[args:{"city": "Oslo"}]]'
    called = await client.responses.create(model=GPT, input=ask, tools=[WEATHER])
    [call] = called.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Oslo"}
    async with client.responses.stream(model=GPT, input=ask, tools=[WEATHER]) as helper:
        arguments = "".join([e.delta async for e in helper if e.type == "response.function_call_arguments.delta"])
    assert arguments == call.arguments
    body = {"model": GPT, "input": "go on [[tokens:3000]]", "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{stack.gateway_url}/v1/responses", json=body, headers={"Authorization": f"Bearer {account['key']}"}
        )
        assert response.status == 200 and await response.content.readline() == b"event: response.created\n"
        response.close()  # hang up: the upstream generates (and bills) on
    used = await metered(stack, account["key"], 3)
    assert sorted(e["output_tokens"] for e in used) == sorted([called.usage.output_tokens] * 2 + [3000])


async def test_a_passed_through_stream_the_upstream_breaks_off_is_billed_for_what_it_streamed(stack: Stack) -> None:
    account = await pro_account(stack)
    body = {"model": GPT, "input": "go on [[tokens:4000]]", "stream": True}
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{stack.gateway_url}/v1/responses", json=body, headers={"Authorization": f"Bearer {account['key']}"}
        )
        received = await response.content.readany()
        while received.count(b"response.output_text.delta") < 100:  # each delta names its type twice
            received += await response.content.readany()
        stack.simulator.kill()  # the provider goes away mid-stream
        try:
            received += await response.read()
        except aiohttp.ClientError:
            pass
        response.close()
    try:
        assert b"response.completed" not in received  # the client never sees an answer end well
        [event] = await metered(stack, account["key"], 1)
        assert 40 < event["output_tokens"] < 4000  # what was streamed before the break, counted
    finally:
        await asyncio.to_thread(stack.simulator.start)
