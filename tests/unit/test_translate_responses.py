"""The Responses <-> chat translation as pure functions, checked against the openai SDK's own types."""

from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseStreamEvent

from services.gateway.translate import responses

STREAM_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
FILE = [{"type": "input_file", "file_id": "f"}]
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}, "strict": True}


@pytest.mark.parametrize(
    ("request_body", "chat"),
    [
        (
            {"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 9, "temperature": 0.5},
            {"model": "m", "max_completion_tokens": 9, "temperature": 0.5,
             "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
        ),
        (
            {"model": "m", "stream": True, "input": [
                {"role": "developer", "content": "rules"},
                {"type": "message", "role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "f", "arguments": "{\"a\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
            ]},
            {"model": "m", "stream": True, "stream_options": {"include_usage": True}, "messages": [
                {"role": "developer", "content": "rules"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA", "detail": "low"}}]},
                {"role": "assistant", "content": "calling", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                    {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "one"},
                {"role": "tool", "tool_call_id": "c2", "content": "two"},
            ]},
        ),
        (
            {"model": "m", "input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "f"},
             "parallel_tool_calls": False, "text": {"format": {"type": "json_schema", "name": "s", "schema": {}}},
             "reasoning": {"effort": "low"}, "store": False},
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "parallel_tool_calls": False,
             "tools": [{"type": "function",
                        "function": {"name": "f", "parameters": TOOL["parameters"], "strict": True}}],
             "tool_choice": {"type": "function", "function": {"name": "f"}},
             "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}},
             "reasoning_effort": "low"},
        ),
    ],
)  # fmt: skip
def test_requests_translate_to_chat(request_body: dict[str, Any], chat: dict[str, Any]) -> None:
    assert responses.to_chat(request_body) == chat


@pytest.mark.parametrize(
    ("request_body", "param"),
    [
        ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": "x", "store": True}, "store"),
        ({}, "input"),
        ({"input": 3}, "input"),
        ({"input": ["x"]}, "input[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": FILE}]}, "input[0].content[0].type"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": "x", "tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0]"),
        ({"input": "x", "tools": [{"type": "namespace", "tools": [{"type": "local_shell"}]}]}, "tools[0].tools[0]"),
        ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": True}, "max_output_tokens"),
        ({"input": "x", "instructions": ["x"]}, "instructions"),
        ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ],
)
def test_what_cannot_be_carried_over_is_refused_naming_the_field(request_body: dict[str, Any], param: str) -> None:
    refused = responses.to_chat({"model": "m", **request_body})
    assert isinstance(refused, responses.Refused) and refused.param == param


CHAT = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "let me look",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
              "prompt_tokens_details": {"cached_tokens": 3}},
}  # fmt: skip


@pytest.mark.parametrize(
    ("finish", "status", "reason"),
    [("stop", "completed", None), ("tool_calls", "completed", None), ("length", "incomplete", "max_output_tokens"),
     ("content_filter", "incomplete", "content_filter")],
)  # fmt: skip
def test_a_chat_completion_becomes_a_response(finish: str, status: str, reason: str | None) -> None:
    ChatCompletion.model_validate(CHAT)
    chat = {**CHAT, "choices": [{**CHAT["choices"][0], "finish_reason": finish}]}  # type: ignore[index]
    answer = Response.model_validate(responses.from_chat(chat, {"model": "m", "input": "x"}, "resp_1", 5))
    assert (answer.status, answer.incomplete_details and answer.incomplete_details.reason) == (status, reason)
    assert answer.output_text == "let me look"
    call = answer.output[1]
    assert call.type == "function_call" and (call.call_id, call.name, call.arguments) == ("call_1", "f", '{"a":1}')
    assert answer.usage is not None
    assert (answer.usage.input_tokens, answer.usage.input_tokens_details.cached_tokens) == (10, 3)
    assert (answer.usage.output_tokens, answer.usage.total_tokens) == (4, 14)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": choices,
            "usage": usage}  # fmt: skip


def run(chunks: list[Any], usage: dict[str, Any]) -> list[Any]:
    translator = responses.StreamToResponses({"model": "m", "input": "x", "stream": True}, "resp_1", 5)
    events = [e for c in chunks for e in translator.feed(c)] + translator.finish(usage)
    return [STREAM_EVENT.validate_python(e) for e in events]  # each one a valid SDK event


def test_a_chat_stream_becomes_the_responses_event_stream_event_by_event() -> None:
    usage = responses.usage(10, 3, 4)
    events = run(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "let "}),
            chunk({"content": "me look"}),
            chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                   "function": {"name": "f", "arguments": ""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\""}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]}),
            chunk({}, "tool_calls"),
            chunk(None, usage={"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}),
            None,  # [DONE]
        ],
        usage,
    )  # fmt: skip
    assert [e.type for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[3].part.text == ""  # as it was when added, not as it ended
    assert events[6].text == "let me look" and events[12].arguments == '{"a":1}'
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "let me look"
    assert final.output[1].arguments == '{"a":1}' and final.usage.model_dump(exclude_none=True) == usage


def test_a_stream_cut_short_ends_failed_and_one_cut_by_max_tokens_incomplete() -> None:
    broken = run([chunk({"content": "half"})], responses.usage(5, 0, 1))
    assert broken[-1].type == "response.failed" and broken[-1].response.usage.output_tokens == 1
    assert broken[-2].type == "response.output_item.done"  # what it said is closed, not lost
    cut = run([chunk({"content": "all"}), chunk({}, "length")], responses.usage(5, 0, 1))
    assert cut[-1].type == "response.incomplete"
    assert cut[-1].response.incomplete_details.reason == "max_output_tokens"
    empty = run([], responses.usage(5, 0, 0))
    assert [e.type for e in empty] == ["response.created", "response.in_progress", "response.failed"]


def test_codex_tools_namespaces_flattened_hosted_dropped() -> None:
    group = {"type": "namespace", "name": "agents", "tools": [{**TOOL, "name": "spawn"}, {**TOOL, "name": "close"}]}
    chat = responses.to_chat({"model": "m", "input": "x", "tools": [TOOL, group, {"type": "web_search"}]})
    assert isinstance(chat, dict) and [t["function"]["name"] for t in chat["tools"]] == ["f", "spawn", "close"]
    only_hosted = responses.to_chat({"model": "m", "input": "x", "tools": [{"type": "web_search"}]})
    assert isinstance(only_hosted, dict) and "tools" not in only_hosted
