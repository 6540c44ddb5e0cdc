"""The Responses <-> chat translation as pure functions, checked against the openai SDK's own types."""

from typing import Any

import pydantic
import pytest
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseStreamEvent

from services.gateway.translate import chat_responses, responses, responses_stream
from services.gateway.usage import Tokens

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
    translator = responses_stream.StreamToResponses({"model": "m", "input": "x", "stream": True}, "resp_1", 5)
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


# -- chat (client) over a Responses upstream: chat_responses --------------------------------------

CHAT_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def test_a_chat_request_is_the_responses_request_that_asks_the_same() -> None:
    chat = {
        "model": "m", "max_tokens": 40, "temperature": 0.2, "stream": True, "stream_options": {"include_usage": True},
        "tools": [CHAT_TOOL], "tool_choice": {"type": "function", "function": {"name": "f"}},
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "look"},
                                         {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]},
            {"role": "assistant", "content": "calling", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "done"},
        ],
    }  # fmt: skip
    assert chat_responses.chat_to_responses(chat) == {
        "model": "m", "store": False, "temperature": 0.2, "max_output_tokens": 40, "stream": True,
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "function", "name": "f"},
        "input": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                         {"type": "input_image", "image_url": "data:image/png;base64,AA"}]},
            {"role": "assistant", "content": "calling"},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "done"},
        ],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "param"),
    [({"stop": ["\n"]}, "stop"), ({"n": 2}, "n"), ({"tools": [{"type": "custom"}]}, "tools[0]"),
     ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"), ({"messages": []}, "messages")],
)  # fmt: skip
def test_what_the_responses_api_cannot_carry_is_refused(change: dict[str, Any], param: str) -> None:
    refused = chat_responses.chat_to_responses({"model": "m", "messages": [{"role": "user", "content": "x"}], **change})
    assert isinstance(refused, responses.Refused) and refused.param == param


def test_a_response_is_the_chat_completion_it_answers() -> None:
    response = {
        "status": "completed",
        "output": [
            {"type": "message", "content": [
                {"type": "output_text", "text": "It is "}, {"type": "output_text", "text": "sunny"}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": '{"a":1}'},
        ],
    }  # fmt: skip
    chat = chat_responses.response_to_chat(response, {"model": "m"}, "chatcmpl-1", 7, Tokens(5, 3, 2))
    completion = ChatCompletion.model_validate(chat)
    assert (
        completion.choices[0].message.content == "It is sunny" and completion.choices[0].finish_reason == "tool_calls"
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert call.id == "call_1" and call.function.arguments == '{"a":1}'  # type: ignore[union-attr]
    assert completion.usage and (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 3)
    cut = chat_responses.response_to_chat(
        {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": []},
        {"model": "m"}, "chatcmpl-1", 7, Tokens(),
    )  # fmt: skip
    assert cut["choices"][0]["finish_reason"] == "length"


def test_a_responses_stream_is_chat_chunks_event_by_event() -> None:
    stream = chat_responses.ResponsesStreamToChat({"model": "m", "stream_options": {"include_usage": True}}, "c", 7)
    events = [
        {"type": "response.created", "response": {}},
        {"type": "response.output_text.delta", "output_index": 0, "delta": "Hi"},
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": ""}},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": '{"a"'},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": ":1}"},
    ]  # fmt: skip
    chunks = [chunk for event in events for chunk in stream.chunks(event)]
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"},
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": ":1}"}}]},
    ]  # fmt: skip
    broken = stream.final_chunks(Tokens(5, 3))  # no response.completed yet: no finish reason, only the usage
    assert [c["choices"] for c in broken] == [[]] and broken[0]["usage"]["completion_tokens"] == 3
    stream.chunks({"type": "response.completed", "response": {"status": "completed"}})
    closing = stream.final_chunks(Tokens(5, 3))
    assert closing[0]["choices"][0]["finish_reason"] == "tool_calls" and closing[1]["usage"]["prompt_tokens"] == 5
    assert stream.finish(Tokens(5, 3)).endswith(b"data: [DONE]\n\n")
