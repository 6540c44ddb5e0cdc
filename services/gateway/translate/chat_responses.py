"""OpenAI chat completions (client) over an upstream that speaks only the Responses API: the
request to Responses, the Response (whole, or its event stream event by event) back to a chat
completion and its chunks. Pure: the gateway does the I/O and bills from the upstream's usage.
(A messages client goes by way of chat: translate.plan composes it with chat_messages.)

What is translated: system and developer turns (as Responses messages of the same role, in
place), user text and image parts, assistant text and tool calls (as `function_call` items),
tool results (`function_call_output`), function `tools`, `tool_choice`, `max_tokens` /
`max_completion_tokens` (-> `max_output_tokens`), `temperature`, `top_p`,
`parallel_tool_calls`, `user`, `response_format` (-> `text.format`), `reasoning_effort`.
Nothing is stored upstream (`store: false`). The Responses API has no stop sequences and one
answer per request, so `stop` and `n` > 1 are refused (400), not silently dropped."""

from typing import Any

from services.gateway.shapes import as_count, as_dict, as_list
from services.gateway.translate import completions
from services.gateway.translate.responses import Refused
from services.gateway.usage import Tokens

PASSED = ("temperature", "top_p", "parallel_tool_calls", "user")
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


# -- the request ---------------------------------------------------------------------------


def chat_to_responses(body: dict[str, Any]) -> dict[str, Any] | Refused:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Refused("messages: required, a non-empty list", "messages")
    if body.get("stop") not in (None, [], ""):
        return Refused("stop: this model's upstream speaks the Responses API, which has no stop sequences", "stop")
    if body.get("n") not in (None, 1):
        return Refused("n: this model's upstream answers once per request (n: 1)", "n")
    items: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        refused = _add_message(items, as_dict(message), f"messages[{i}]")
        if refused:
            return refused
    call: dict[str, Any] = {"model": body.get("model"), "input": items, "store": False}
    for name in PASSED:
        if body.get(name) is not None:
            call[name] = body[name]
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            return Refused("max_tokens: must be a positive whole number", "max_tokens")
        call["max_output_tokens"] = limit
    for translate in (_tools, _tool_choice, _response_format):
        refused = translate(body, call)
        if refused:
            return refused
    if isinstance(body.get("reasoning_effort"), str):
        call["reasoning"] = {"effort": body["reasoning_effort"]}
    if body.get("stream") is True:
        call["stream"] = True
    return call


def _add_message(items: list[dict[str, Any]], message: dict[str, Any], where: str) -> Refused | None:
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        return Refused(f"{where}.role: system, developer, user, assistant or tool, not {role!r}", f"{where}.role")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            return Refused(f"{where}.tool_call_id: required, a string", f"{where}.tool_call_id")
        items.append({"type": "function_call_output", "call_id": call_id, "output": _text(content)})
        return None
    if role == "user" and isinstance(content, list):
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            kind = as_dict(part).get("type")
            if kind == "text":
                parts.append({"type": "input_text", "text": part.get("text", "")})
            elif kind == "image_url" and isinstance(as_dict(part.get("image_url")).get("url"), str):
                parts.append({"type": "input_image", "image_url": part["image_url"]["url"]})
            else:
                return Refused(f"{where}.content[{j}].type: {kind!r} is not supported here", f"{where}.content[{j}]")
        items.append({"role": "user", "content": parts})
    elif content is not None:
        items.append({"role": role, "content": _text(content)})
    for j, call in enumerate(as_list(message.get("tool_calls")) if role == "assistant" else ()):
        call_id, function = as_dict(call).get("id"), as_dict(as_dict(call).get("function"))
        if not isinstance(call_id, str) or not isinstance(function.get("name"), str):
            return Refused(f"{where}.tool_calls[{j}]: needs an id and a function name", f"{where}.tool_calls[{j}]")
        arguments = function.get("arguments")
        items.append({
            "type": "function_call", "call_id": call_id, "name": function["name"],
            "arguments": arguments if isinstance(arguments, str) else "",
        })  # fmt: skip
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _tools(body: dict[str, Any], call: dict[str, Any]) -> Refused | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return Refused("tools: must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        function = as_dict(as_dict(tool).get("function"))
        if as_dict(tool).get("type") != "function" or not function.get("name"):
            return Refused(f"tools[{i}]: only function tools with a name are supported", f"tools[{i}]")
        keep = {k: function[k] for k in ("name", "description", "parameters", "strict") if function.get(k) is not None}
        out.append({"type": "function", **keep})
    if out:
        call["tools"] = out
    return None


def _tool_choice(body: dict[str, Any], call: dict[str, Any]) -> Refused | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    name = as_dict(as_dict(choice).get("function")).get("name")
    if choice in ("auto", "none", "required"):
        call["tool_choice"] = choice
    elif as_dict(choice).get("type") == "function" and isinstance(name, str):
        call["tool_choice"] = {"type": "function", "name": name}
    else:
        return Refused("tool_choice: auto, none, required or {type: function, function: {name}}", "tool_choice")
    return None


def _response_format(body: dict[str, Any], call: dict[str, Any]) -> Refused | None:
    fmt = body.get("response_format")
    kind = as_dict(fmt).get("type")
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        call["text"] = {"format": {"type": "json_object"}}
    elif kind == "json_schema":
        schema = as_dict(as_dict(fmt).get("json_schema"))
        call["text"] = {"format": {"type": "json_schema", **schema}}
    else:
        return Refused("response_format.type: text, json_object or json_schema", "response_format.type")
    return None


# -- the answer ----------------------------------------------------------------------------


def finish_reason(status: Any, incomplete: Any, calls: bool) -> str:
    """A Response's status (and incomplete_details.reason) as chat's finish_reason."""
    if status == "incomplete":
        return "content_filter" if as_dict(incomplete).get("reason") == "content_filter" else "length"
    return "tool_calls" if calls else "stop"


def response_to_chat(
    response: dict[str, Any], request: dict[str, Any], completion_id: str, created: int, tokens: Tokens
) -> dict[str, Any]:
    text, calls = "", []
    for item in as_list(response.get("output")):
        item = as_dict(item)
        if item.get("type") == "message":
            text += "".join(as_dict(p).get("text", "") for p in as_list(item.get("content")) if _is_text(p))
        elif item.get("type") == "function_call":
            calls.append(completions.tool_call(item.get("call_id"), item.get("name"), item.get("arguments") or ""))
    finish = finish_reason(response.get("status"), response.get("incomplete_details"), bool(calls))
    return completions.completion(request, completion_id, created, text, calls, finish, tokens)


def _is_text(part: Any) -> bool:
    return as_dict(part).get("type") == "output_text"


class ResponsesStreamToChat(completions.ChunkStream):
    """A Responses event stream as chat completion chunks, event by event."""

    finish_reason: str | None = None

    def chunks(self, event: Any) -> list[dict[str, Any]]:
        """The chat chunks for one Responses event (none for most bookkeeping events)."""
        data = as_dict(event)
        kind = data.get("type")
        if kind == "response.created":
            return [self._role()]
        if kind == "response.output_text.delta" and data.get("delta"):
            return [self._text(data["delta"])]
        if kind == "response.output_item.added" and as_dict(data.get("item")).get("type") == "function_call":
            item = data["item"]
            index = as_count(data.get("output_index"))
            return [self._call_opened(index, item.get("call_id"), item.get("name"), item.get("arguments") or "")]
        if kind == "response.function_call_arguments.delta" and data.get("delta"):
            return [self._arguments(as_count(data.get("output_index")), data["delta"])]
        if kind in ("response.completed", "response.incomplete"):
            answer = as_dict(data.get("response"))
            calls = bool(self._calls)
            self.finish_reason = finish_reason(answer.get("status"), answer.get("incomplete_details"), calls)
        return []

    def closing_reason(self) -> str | None:
        return self.finish_reason
