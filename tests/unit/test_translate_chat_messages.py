"""Which calls are translated, and the chat <-> messages mapping's corners, as pure functions."""

import json

import pytest

from services.gateway import translate
from services.gateway.translate import chat_messages
from services.gateway.usage import Tokens

CHAT = frozenset({"chat"})
MESSAGES = frozenset({"messages"})
BOTH = frozenset({"chat", "messages", "images"})


@pytest.mark.parametrize(
    ("path", "speaks", "upstream_path"),
    [
        ("/v1/chat/completions", BOTH, None),
        ("/v1/messages", BOTH, None),
        ("/v1/images/generations", CHAT, None),
        ("/v1/chat/completions", MESSAGES, "/v1/messages"),
        ("/v1/messages", CHAT, "/v1/chat/completions"),
        ("/v1/responses", BOTH, "/v1/chat/completions"),
        ("/v1/responses", frozenset({"chat", "responses"}), None),
        ("/v1/responses", MESSAGES, "/v1/messages"),
        ("/v1/chat/completions", frozenset({"responses"}), "/v1/responses"),
        ("/v1/messages", frozenset({"responses"}), "/v1/responses"),
        ("/v1/messages", frozenset({"chat", "responses"}), "/v1/chat/completions"),
    ],
)
def test_a_call_is_translated_only_when_its_upstream_does_not_speak_its_protocol(
    path: str, speaks: frozenset[str], upstream_path: str | None
) -> None:
    body = {"model": "m", "max_tokens": 5, "input": "x", "messages": [{"role": "user", "content": "x"}]}
    plan = translate.plan(path, body, speaks)
    assert (plan.upstream_path if isinstance(plan, translate.Translation) else plan) == upstream_path


def test_what_no_upstream_protocol_can_carry_is_refused() -> None:
    refused = translate.plan("/v1/responses", {"model": "m", "input": "x"}, frozenset({"images"}))
    assert isinstance(refused, translate.Refused) and refused.param == "model"
    server_tool = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                   "tools": [{"type": "web_search_20250305", "name": "web_search"}]}  # fmt: skip
    refused = translate.plan("/v1/messages", server_tool, CHAT)
    assert isinstance(refused, translate.Refused) and refused.param == "tools.0"


def test_chat_to_messages_gathers_system_prompts_and_tool_results_into_turns() -> None:
    call = chat_messages.chat_to_messages({
        "model": "m", "stop": "END", "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [
            {"role": "system", "content": "one"}, {"role": "developer", "content": "two"},
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}},
                {"id": "b", "type": "function", "function": {"name": "f", "arguments": ""}}]},
            {"role": "tool", "tool_call_id": "a", "content": "A"},
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "B"}]},
        ],
    })  # fmt: skip
    assert isinstance(call, dict)
    assert call["system"] == "one\n\ntwo" and call["stop_sequences"] == ["END"] and call["max_tokens"] == 4096
    assert call["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert [m["role"] for m in call["messages"]] == ["user", "assistant", "user"]
    assert call["messages"][1]["content"] == [
        {"type": "tool_use", "id": "a", "name": "f", "input": {"x": 1}},
        {"type": "tool_use", "id": "b", "name": "f", "input": {}},
    ]
    assert [b["tool_use_id"] for b in call["messages"][2]["content"]] == ["a", "b"]


def test_a_messages_stream_cut_short_has_no_finish_reason_and_still_ends() -> None:
    stream = chat_messages.MessagesStreamToChat({"model": "m", "stream_options": {"include_usage": True}}, "c", 1)
    out = stream.feed({"type": "message_start", "message": {}}) + stream.feed(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hal"}}
    )
    end = stream.finish(Tokens(input=3, output=1))
    chunks = [json.loads(line[6:]) for line in (out + end).decode().split("\n\n") if line.startswith("data: {")]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]] == [None, None]
    assert chunks[-1]["usage"]["prompt_tokens"] == 3 and end.endswith(b"data: [DONE]\n\n")
    back = chat_messages.ChatStreamToMessages({"model": "m"}, "msg_1")
    closing = (back.feed({"choices": [{"index": 0, "delta": {"content": "x"}}]}) + back.finish(Tokens())).decode()
    assert closing.rstrip().endswith(
        '"type":"error","error":{"type":"api_error","message":"the upstream provider broke off the answer"}}'
    )
