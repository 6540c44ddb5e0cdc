"""OpenAI chat completions <-> Anthropic messages, both ways: the request, the whole answer and
the stream event by event (text, tool calls and their results, system prompts, stop reasons,
usage). Pure: the gateway does the I/O and bills from the upstream's own usage report.

`MessagesOverChat`: a client speaking messages (Claude Code) to an upstream speaking chat.
`ChatOverMessages`: a client speaking chat (the openai SDK) to an upstream speaking messages.
"""

import json
from typing import Any

from services.gateway.shapes import as_count, as_dict, as_list, as_str
from services.gateway.translate import completions
from services.gateway.translate.responses import Refused
from services.gateway.usage import Tokens

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires max_tokens; a chat request may leave it out."""
TO_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TO_CHAT_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
TO_ANTHROPIC_CHOICE = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}
TO_CHAT_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
SAMPLING = ("temperature", "top_p")
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _text(content: Any) -> str:
    """The text of a string or of a list of text blocks / parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


# -- messages (client) over chat (upstream) ------------------------------------------------


def messages_to_chat(body: dict[str, Any]) -> dict[str, Any] | Refused:
    out: list[dict[str, Any]] = []
    if body.get("system") is not None:
        out.append({"role": "system", "content": _text(body["system"])})
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Refused("messages: required, a non-empty list", "messages")
    for i, message in enumerate(messages):
        role, content = as_dict(message).get("role"), as_dict(message).get("content")
        if role == "system":  # a system turn in the conversation (Claude Code sends them)
            out.append({"role": "system", "content": _text(content)})
            continue
        if role not in ("user", "assistant"):
            return Refused(f"messages.{i}.role: user, assistant or system, not {role!r}", f"messages.{i}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            return Refused(f"messages.{i}.content: a string or a list of blocks", f"messages.{i}.content")
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            kind = as_dict(block).get("type")
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image" and role == "user" and as_dict(block.get("source")).get("type") == "base64":
                source = block["source"]
                url = f"data:{source.get('media_type')};base64,{source.get('data')}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            elif kind == "tool_result" and role == "user":
                out.append(
                    {"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": _text(block.get("content"))}
                )
            elif kind == "tool_use" and role == "assistant":
                arguments = _encode(block.get("input") or {})
                calls.append(
                    {
                        "id": block.get("id"),
                        "type": "function",
                        "function": {"name": block.get("name"), "arguments": arguments},
                    }
                )
            elif kind in ("thinking", "redacted_thinking"):
                pass  # the model's own notes: chat has no place for them
            else:
                where = f"messages.{i}.content.{j}.type"
                return Refused(f"{where}: {kind!r} cannot be translated for this model", where)
        if role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": _text(parts) or None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
        elif parts:
            out.append({"role": "user", "content": parts})
    chat: dict[str, Any] = {"model": body.get("model"), "messages": out}
    if isinstance(body.get("max_tokens"), int):
        chat["max_completion_tokens"] = body["max_tokens"]
    if isinstance(body.get("stop_sequences"), list) and body["stop_sequences"]:
        chat["stop"] = body["stop_sequences"]
    for name in SAMPLING:
        if body.get(name) is not None:
            chat[name] = body[name]
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chat["tools"] = []
        for k, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "custom") != "custom" or "name" not in tool:
                return Refused(f"tools.{k}: only custom (function) tools can be translated", f"tools.{k}")
            function = {"name": tool["name"], "parameters": tool.get("input_schema") or {"type": "object"}}
            if tool.get("description"):
                function["description"] = tool["description"]
            chat["tools"].append({"type": "function", "function": function})
    choice = as_dict(body.get("tool_choice"))
    if choice.get("type") in TO_CHAT_CHOICE:
        chat["tool_choice"] = TO_CHAT_CHOICE[choice["type"]]
    elif choice.get("type") == "tool":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    if choice.get("disable_parallel_tool_use") is True:
        chat["parallel_tool_calls"] = False
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def anthropic_usage(tokens: Tokens) -> dict[str, int]:
    return {
        "input_tokens": tokens.input,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": tokens.cached,
        "output_tokens": tokens.output,
    }


def chat_to_message(chat: dict[str, Any], request: dict[str, Any], message_id: str, tokens: Tokens) -> dict[str, Any]:
    choices = chat.get("choices")
    choice = as_dict(choices[0]) if isinstance(choices, list) and choices else {}
    message = as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in as_list(message.get("tool_calls")):
        function = as_dict(as_dict(call).get("function"))
        content.append(
            {
                "type": "tool_use",
                "id": as_dict(call).get("id"),
                "name": function.get("name"),
                "input": _arguments(function.get("arguments")),
            }
        )
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": request.get("model"),
        "content": content,
        "stop_reason": TO_ANTHROPIC_STOP.get(as_str(choice.get("finish_reason")) or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(tokens),
    }


def _arguments(arguments: Any) -> Any:
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {_encode(data)}\n\n".encode()


class ChatStreamToMessages:
    """A chat completion stream as the Messages event sequence, chunk by chunk."""

    def __init__(self, request: dict[str, Any], message_id: str) -> None:
        self.request, self.message_id = request, message_id
        self._started = False
        self._block: int | None = None  # index of the open content block
        self._kind = ""  # its type
        self._blocks = 0
        self._tools: dict[int, int] = {}  # chat tool call index -> block index
        self.finish_reason: str | None = None

    def feed(self, chunk: Any) -> bytes:
        out = self._start()
        for choice in as_list(as_dict(chunk).get("choices")):
            delta = as_dict(as_dict(choice).get("delta"))
            if isinstance(delta.get("content"), str) and delta["content"]:
                if self._kind != "text":
                    out += self._open({"type": "text", "text": ""})
                out += _event(
                    {
                        "type": "content_block_delta",
                        "index": self._block,
                        "delta": {"type": "text_delta", "text": delta["content"]},
                    }
                )
            for call in map(as_dict, as_list(delta.get("tool_calls"))):
                index, function = call.get("index", 0), as_dict(call.get("function"))
                if not isinstance(index, int):
                    index = 0
                if index not in self._tools:
                    out += self._open(
                        {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
                    )
                    self._tools[index] = self._blocks - 1
                if isinstance(function.get("arguments"), str) and function["arguments"]:
                    out += _event(
                        {
                            "type": "content_block_delta",
                            "index": self._tools[index],
                            "delta": {"type": "input_json_delta", "partial_json": function["arguments"]},
                        }
                    )
            if isinstance(reason := as_dict(choice).get("finish_reason"), str) and reason:
                self.finish_reason = reason
        return out

    def finish(self, tokens: Tokens) -> bytes:
        out = self._start() + self._close()
        if self.finish_reason is None:
            error = {"type": "api_error", "message": "the upstream provider broke off the answer"}
            return out + _event({"type": "error", "error": error})
        delta = {"stop_reason": TO_ANTHROPIC_STOP.get(self.finish_reason, "end_turn"), "stop_sequence": None}
        out += _event({"type": "message_delta", "delta": delta, "usage": anthropic_usage(tokens)})
        return out + _event({"type": "message_stop"})

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.request.get("model"),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": anthropic_usage(Tokens()),
        }
        return _event({"type": "message_start", "message": message})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block, self._kind = self._blocks, block["type"]
        self._blocks += 1
        return out + _event({"type": "content_block_start", "index": self._block, "content_block": block})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        index, self._block, self._kind = self._block, None, ""
        return _event({"type": "content_block_stop", "index": index})


# -- chat (client) over messages (upstream) ------------------------------------------------


def chat_to_messages(body: dict[str, Any]) -> dict[str, Any] | Refused:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Refused("messages: required, a non-empty list", "messages")
    for i, message in enumerate(messages):
        role, content = as_dict(message).get("role"), as_dict(message).get("content")
        blocks: list[dict[str, Any]] = []
        if role in ("system", "developer"):
            system.append(_text(content))
            continue
        if role == "tool":
            blocks.append(
                {"type": "tool_result", "tool_use_id": message.get("tool_call_id"), "content": _text(content)}
            )
            role = "user"
        elif role in ("user", "assistant"):
            parts = [{"type": "text", "text": content}] if isinstance(content, str) and content else content or []
            if not isinstance(parts, list):
                return Refused(f"messages[{i}].content: a string or a list of parts", f"messages[{i}].content")
            for j, part in enumerate(parts):
                kind = as_dict(part).get("type")
                url = as_dict(as_dict(part).get("image_url")).get("url")
                if kind == "text":
                    blocks.append({"type": "text", "text": part.get("text", "")})
                elif kind == "image_url" and isinstance(url, str) and url.startswith("data:") and ";base64," in url:
                    media, data = url[5:].split(";base64,", 1)
                    blocks.append({"type": "image", "source": {"type": "base64", "media_type": media, "data": data}})
                elif kind == "image_url" and isinstance(url, str):
                    blocks.append({"type": "image", "source": {"type": "url", "url": url}})
                else:
                    where = f"messages[{i}].content[{j}].type"
                    return Refused(f"{where}: {kind!r} cannot be translated for this model", where)
            for tool_call in as_list(as_dict(message).get("tool_calls")):
                function = as_dict(as_dict(tool_call).get("function"))
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": as_dict(tool_call).get("id"),
                        "name": function.get("name"),
                        "input": _arguments(function.get("arguments")),
                    }
                )
        else:
            return Refused(f"messages[{i}].role: {role!r} cannot be translated", f"messages[{i}].role")
        if out and out[-1]["role"] == role:  # Anthropic alternates turns: one turn, its blocks together
            out[-1]["content"].extend(blocks)
        elif blocks:
            out.append({"role": role, "content": blocks})
    limits = [v for v in (body.get("max_completion_tokens"), body.get("max_tokens")) if isinstance(v, int)]
    call: dict[str, Any] = {
        "model": body.get("model"),
        "messages": out,
        "max_tokens": limits[0] if limits else DEFAULT_MAX_TOKENS,
    }
    if system:
        call["system"] = "\n\n".join(system)
    stop = body.get("stop")
    if stop:
        call["stop_sequences"] = [stop] if isinstance(stop, str) else stop
    for name in SAMPLING:
        if body.get(name) is not None:
            call[name] = body[name]
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        call["tools"] = []
        for k, tool in enumerate(tools):
            function = as_dict(as_dict(tool).get("function"))
            if as_dict(tool).get("type") != "function" or "name" not in function:
                return Refused(f"tools[{k}]: only function tools can be translated", f"tools[{k}]")
            entry = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object"}}
            if function.get("description"):
                entry["description"] = function["description"]
            call["tools"].append(entry)
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice in TO_ANTHROPIC_CHOICE:
        call["tool_choice"] = dict(TO_ANTHROPIC_CHOICE[choice])
    elif isinstance(choice, dict) and as_dict(choice.get("function")).get("name"):
        call["tool_choice"] = {"type": "tool", "name": choice["function"]["name"]}
    if body.get("parallel_tool_calls") is False and "tools" in call:
        call["tool_choice"] = {**call.get("tool_choice", {"type": "auto"}), "disable_parallel_tool_use": True}
    if body.get("stream") is True:
        call["stream"] = True
    return call


def message_to_chat(
    message: dict[str, Any], request: dict[str, Any], completion_id: str, created: int, tokens: Tokens
) -> dict[str, Any]:
    text = "".join(as_str(b.get("text")) for b in as_list(message.get("content")) if as_dict(b).get("type") == "text")
    calls = [
        completions.tool_call(b.get("id"), b.get("name"), _encode(b.get("input") or {}))
        for b in as_list(message.get("content"))
        if as_dict(b).get("type") == "tool_use"
    ]
    finish = TO_CHAT_FINISH.get(as_str(message.get("stop_reason")) or "end_turn", "stop")
    return completions.completion(request, completion_id, created, text, calls, finish, tokens)


class MessagesStreamToChat(completions.ChunkStream):
    """A Messages event stream as chat completion chunks, event by event."""

    stop_reason: str | None = None

    def chunks(self, event: Any) -> list[dict[str, Any]]:
        """The chat chunks for one Messages event (none for most bookkeeping events)."""
        data = as_dict(event)
        kind = data.get("type")
        if kind == "message_start":
            return [self._role()]
        if kind == "content_block_start" and as_dict(data.get("content_block")).get("type") == "tool_use":
            block = data["content_block"]
            return [self._call_opened(as_count(data.get("index")), block.get("id"), block.get("name"), "")]
        if kind == "content_block_delta":
            delta = as_dict(data.get("delta"))
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [self._text(delta["text"])]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                return [self._arguments(as_count(data.get("index")), delta["partial_json"])]
        if kind == "message_delta":
            self.stop_reason = as_dict(data.get("delta")).get("stop_reason") or self.stop_reason
        return []

    def closing_reason(self) -> str | None:
        return TO_CHAT_FINISH.get(self.stop_reason or "", "stop") if self.stop_reason else None
