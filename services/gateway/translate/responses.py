"""OpenAI Responses API (`POST /v1/responses`, what Codex speaks) over an upstream that speaks
chat completions: the request to chat, the chat answer (whole or streamed, chunk by chunk) back
to a Response and its event stream. Pure: the gateway does the I/O and the billing.

What is translated: `input` as a string or items (messages with text / image parts,
`function_call`, `function_call_output`; `reasoning` items are dropped: chat cannot carry them),
`instructions` (a system message first), function `tools`, `tool_choice`, `max_output_tokens`,
`temperature`, `top_p`, `parallel_tool_calls`, `text.format` (JSON schema / object) and
`reasoning.effort`. A `namespace` of function tools (Codex groups some) is offered as its
functions by their own names; hosted tools (`web_search`, `file_search`, ...) are dropped,
since only OpenAI's servers run them; other tool types (custom, local_shell, computer) are
refused. The gateway stores no responses, so `previous_response_id` and
`store: true` are refused (400), as is anything else it cannot carry over faithfully.
"""

from typing import Any, NamedTuple

from services.gateway.shapes import as_count, as_dict, as_list

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "developer"}
"""Responses message role -> chat role."""
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})
TOOL_CHOICES = frozenset({"auto", "none", "required"})
HOSTED_TOOLS = frozenset({"web_search", "web_search_preview", "file_search", "code_interpreter", "image_generation"})
"""Tools OpenAI's servers run (Codex offers web_search): dropped, as chat cannot ask for them."""
PASSED = ("temperature", "top_p", "parallel_tool_calls", "user")
"""Request fields with the same name and meaning in both protocols."""
FINISH: dict[str | None, tuple[str, str | None]] = {
    "stop": ("completed", None),
    "tool_calls": ("completed", None),
    "function_call": ("completed", None),
    "length": ("incomplete", "max_output_tokens"),
    "content_filter": ("incomplete", "content_filter"),
}
"""chat finish_reason -> (Response status, incomplete_details.reason)."""


class Refused(NamedTuple):
    """A request that cannot be translated: a 400 naming the field."""

    message: str
    param: str


# -- the request ------------------------------------------------------------------------


def to_chat(body: dict[str, Any]) -> dict[str, Any] | Refused:
    """A Responses request as the chat completions request that asks the same."""
    if body.get("previous_response_id") is not None:
        return Refused(
            "previous_response_id: not supported: this gateway stores no responses; "
            "send the whole conversation in `input` (as Codex does with store: false)",
            "previous_response_id",
        )
    if body.get("store") is True:
        return Refused("store: true is not supported: this gateway stores no responses; send store: false", "store")
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            return Refused("instructions: must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    given = body.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list) and given:
        for i, item in enumerate(given):
            refused = _add_item(messages, item, f"input[{i}]")
            if refused:
                return refused
    else:
        return Refused("input: required, a string or a non-empty list of items", "input")
    chat: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name in PASSED:
        if body.get(name) is not None:
            chat[name] = body[name]
    limit = body.get("max_output_tokens")
    if limit is not None:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            return Refused("max_output_tokens: must be a positive whole number", "max_output_tokens")
        chat["max_completion_tokens"] = limit
    for translate in (_tools, _tool_choice, _text_format, _reasoning):
        refused = translate(body, chat)
        if refused:
            return refused
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _add_item(messages: list[dict[str, Any]], item: Any, where: str) -> Refused | None:
    if not isinstance(item, dict):
        return Refused(f"{where}: must be an object", where)
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = ROLES.get(item.get("role"))  # type: ignore[arg-type]
        if role is None:
            return Refused(f"{where}.role: must be one of {', '.join(ROLES)}", f"{where}.role")
        content = _content(item.get("content"), f"{where}.content", role)
        if isinstance(content, Refused):
            return content
        messages.append({"role": role, "content": content})
    elif kind == "function_call":
        call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments", "")
        if not isinstance(call_id, str) or not isinstance(name, str) or not isinstance(arguments, str):
            return Refused(f"{where}: a function_call needs call_id, name and arguments (strings)", where)
        call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":  # one assistant turn: its text and its calls
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        call_id, output = item.get("call_id"), item.get("output")
        if not isinstance(call_id, str):
            return Refused(f"{where}.call_id: required, a string", f"{where}.call_id")
        if isinstance(output, list):  # output as content parts: their text
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        if not isinstance(output, str):
            return Refused(f"{where}.output: required, a string", f"{where}.output")
        messages.append({"role": "tool", "tool_call_id": call_id, "content": output})
    elif kind == "reasoning":
        pass  # a reasoning model's own notes: chat has no place for them, the model does without
    else:
        return Refused(f"{where}.type: {kind!r} is not supported here", f"{where}.type")
    return None


def _content(content: Any, where: str, role: str) -> str | list[dict[str, Any]] | Refused:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return Refused(f"{where}: must be a string or a list of content parts", where)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(text := part.get("text", part.get("refusal")), str):
            parts.append({"type": "text", "text": text})
        elif kind == "input_image" and role == "user" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"], **({"detail": part["detail"]} if "detail" in part else {})}
            parts.append({"type": "image_url", "image_url": image})
        else:
            return Refused(f"{where}[{j}].type: {kind!r} is not supported here", f"{where}[{j}].type")
    if role != "user" and all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)  # chat's other roles take text
    return parts


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> Refused | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return Refused("tools: must be a list", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in HOSTED_TOOLS:
            continue  # run by OpenAI's servers, which chat cannot ask for: the model does without
        group = tool.get("tools") if kind == "namespace" and isinstance(tool, dict) else [tool]
        for j, function in enumerate(group if isinstance(group, list) else [None]):
            where = f"tools[{i}]" if kind != "namespace" else f"tools[{i}].tools[{j}]"
            if not isinstance(function, dict) or function.get("type") != "function" or not function.get("name"):
                found = function.get("type") if isinstance(function, dict) else None
                return Refused(f"{where}: only function tools with a name are supported (got {found!r})", where)
            keep = {
                k: function[k] for k in ("name", "description", "parameters", "strict") if function.get(k) is not None
            }
            out.append({"type": "function", "function": keep})
    if out:
        chat["tools"] = out
    return None


def _tool_choice(body: dict[str, Any], chat: dict[str, Any]) -> Refused | None:
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        return Refused("tool_choice: auto, none, required or {type: function, name}", "tool_choice")
    return None


def _text_format(body: dict[str, Any], chat: dict[str, Any]) -> Refused | None:
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_schema" and isinstance(fmt, dict):
        schema = {k: fmt[k] for k in ("name", "description", "schema", "strict") if k in fmt}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif kind != "text":
        return Refused("text.format.type: text, json_object or json_schema", "text.format.type")
    return None


def _reasoning(body: dict[str, Any], chat: dict[str, Any]) -> Refused | None:
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    return None


# -- the answer -------------------------------------------------------------------------


def usage(input_tokens: int, cached_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A Responses usage block (input_tokens include the cached ones, as OpenAI counts them)."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def chat_usage(chat: Any) -> dict[str, Any] | None:
    """A chat usage block as a Responses one."""
    if not isinstance(chat, dict):
        return None
    details = chat.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return usage(as_count(chat.get("prompt_tokens")), as_count(cached), as_count(chat.get("completion_tokens")))


def response(
    request: dict[str, Any],
    response_id: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage_block: dict[str, Any] | None,
    incomplete: str | None = None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Response object, echoing the request's settings as the Responses API does."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": request.get("model"),
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "store": False,
        "temperature": request.get("temperature", 1.0),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": usage_block,
        "user": None,
        "metadata": {},
    }


def from_chat(chat: dict[str, Any], request: dict[str, Any], response_id: str, created: int) -> dict[str, Any]:
    """A whole chat completion as the Response it answers."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = as_dict(choice.get("message"))
    output: list[dict[str, Any]] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        output.append(message_item(f"msg_{response_id[5:]}", content, "completed"))
    for n, call in enumerate(as_list(message.get("tool_calls"))):
        function = as_dict(call.get("function")) if isinstance(call, dict) else {}
        call_id = call.get("id", "") if isinstance(call, dict) else ""
        output.append(
            call_item(
                f"fc_{response_id[5:]}_{n}",
                call_id,
                function.get("name", ""),
                function.get("arguments", ""),
                "completed",
            )
        )
    status, incomplete = FINISH.get(choice.get("finish_reason"), ("completed", None))
    return response(request, response_id, created, status, output, chat_usage(chat.get("usage")), incomplete)


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": [part]}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }
