"""`POST /v1/responses` in the OpenAI Responses API's shapes: a Response object, or its event
stream (`response.created` ... `response.output_text.delta` / `response.function_call_arguments.delta`
... `response.completed` carrying `usage`).

The prompt is counted by text.py's rules over the conversation as the Responses API gives it:
`instructions` is one message, each `message` item one, a run of `function_call` items one (the
assistant's turn), each `function_call_output` one (its output's words); `reasoning` items count
nothing. Tools: function tools (also inside a `namespace`) are offered to tools.choose; hosted
and other tool types are accepted and never called. Like OpenAI's, the reply is cut at
`max_output_tokens` (status `incomplete`); nothing is stored, so `previous_response_id` is a 404
as for a response that does not exist."""

import itertools
import secrets
import time
from typing import Annotated, Any

import msgspec
from aiohttp import web

from services.simulator import text, tools
from services.simulator.common import (
    MAX_TOKENS,
    BadRequest,
    ProtocolApi,
    decode,
    generation_time,
    stream_out,
)
from services.simulator.openai_api import DEFAULT_MAX_TOKENS, REFUSALS, error

MaxTokens = Annotated[int, msgspec.Meta(ge=16, le=MAX_TOKENS)]
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


class ResponsesRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: MaxTokens | None = None
    stream: bool | None = None
    previous_response_id: str | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)
_encoder = msgspec.json.Encoder()
_PREFIX = secrets.token_hex(6)
_ids = itertools.count()


def _text_of(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [p["text"] for p in content if isinstance(p, dict) and p.get("type") in TEXT_PARTS and "text" in p]
    return []


def conversation(request: ResponsesRequest) -> tuple[list[list[str]], list[str]]:
    """Each message's text pieces, and each one's role (system, user, assistant or tool)."""
    pieces: list[list[str]] = [[request.instructions]] if request.instructions is not None else []
    roles = ["system"] * len(pieces)
    given = request.input
    items = [{"type": "message", "role": "user", "content": given}] if isinstance(given, str) else given
    for i, item in enumerate(items):
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise BadRequest(f"input[{i}].role: Invalid value: {role!r}", f"input[{i}].role")
            pieces.append(_text_of(item.get("content")))
            roles.append("system" if role == "developer" else role)
        elif kind == "function_call":
            if roles[-1:] != ["assistant"]:
                pieces.append([])
                roles.append("assistant")
        elif kind == "function_call_output":
            output = item.get("output")
            pieces.append(_text_of(output) if isinstance(output, list) else [str(output or "")])
            roles.append("tool")
        elif kind is None:
            raise BadRequest(f"input[{i}].type: Field required", f"input[{i}].type")
    if not pieces:
        raise BadRequest("input: must not be empty", "input")
    return pieces, roles


def offered(request: ResponsesRequest) -> list[tools.Offered]:
    functions = []
    for tool in request.tools or ():
        group = tool.get("tools") if tool.get("type") == "namespace" else [tool]
        for function in group if isinstance(group, list) else ():
            if isinstance(function, dict) and function.get("type") == "function" and function.get("name"):
                functions.append(tools.Offered(function["name"], function.get("parameters")))
    return functions


def forced_tool(choice: str | dict[str, Any] | None) -> str | None:
    if choice is None or choice == "auto":
        return None
    if choice == "required":
        return "*"
    if choice == "none":
        return "none"
    return choice.get("name") if isinstance(choice, dict) else None


def usage(prompt: text.Prompt, output: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt.tokens, "input_tokens_details": {"cached_tokens": prompt.cached},
        "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt.tokens + output,
    }  # fmt: skip


def response(
    request: ResponsesRequest, response_id: str, created: int, status: str, output: list[dict[str, Any]], used: Any
) -> dict[str, Any]:
    return {
        "id": response_id, "object": "response", "created_at": created, "status": status, "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": request.instructions, "max_output_tokens": request.max_output_tokens,
        "model": request.model, "output": output, "parallel_tool_calls": True, "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "store": False, "temperature": 1.0,
        "text": {"format": {"type": "text"}}, "tool_choice": request.tool_choice or "auto",
        "tools": request.tools or [], "top_p": 1.0, "truncation": "disabled", "usage": used, "user": None,
        "metadata": {},
    }  # fmt: skip


def _sse(event: dict[str, Any]) -> bytes:
    kind: str = event["type"]
    return b"event: " + kind.encode() + b"\ndata: " + _encoder.encode(event) + b"\n\n"


def _parse(body: bytes) -> tuple[ResponsesRequest, list[list[str]], list[str]]:
    call = decode(_decoder, body)
    return call, *conversation(call)


class ResponsesApi(ProtocolApi):
    refusals = REFUSALS

    def routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_post(prefix + "/v1/responses", self.create)

    async def create(self, request: web.Request) -> web.StreamResponse:
        opened = await self.opening(request, "responses", _parse, lambda parsed: parsed[0].model)
        if isinstance(opened, web.Response):
            return opened
        call, pieces, roles = opened
        if call.previous_response_id is not None:
            message = f"Previous response with id '{call.previous_response_id}' not found."
            return error(404, message, "previous_response_id", code="previous_response_not_found")
        last_user = next((pieces[i] for i in range(len(roles) - 1, -1, -1) if roles[i] == "user"), [])
        prompt = text.analyse(call.model, pieces, last_user)
        last = next((i for i in range(len(roles) - 1, -1, -1) if roles[i] != "system"), -1)
        tool = tools.choose(offered(call), forced_tool(call.tool_choice), roles[last] == "user", " ".join(pieces[last]))
        limit = call.max_output_tokens or DEFAULT_MAX_TOKENS
        n = tool.tokens if tool is not None else text.completion_length(prompt, limit)
        status = "incomplete" if tool is None and n == limit else "completed"
        serial = f"{_PREFIX}{next(_ids):012x}"
        response_id, created = f"resp_{serial}", int(time.time())
        if tool is not None:
            item: dict[str, Any] = {
                "type": "function_call", "id": f"fc_{serial}", "call_id": f"call_{serial}", "name": tool.name,
                "arguments": tool.arguments, "status": "completed",
            }  # fmt: skip
        else:
            part = {"type": "output_text", "text": text.completion_text(prompt.start, n), "annotations": []}
            item = {"type": "message", "id": f"msg_{serial}", "status": "completed", "role": "assistant",
                    "content": [part]}  # fmt: skip
        done = response(call, response_id, created, status, [item], usage(prompt, n))
        if not call.stream:
            await generation_time(self.settings, n)
            return web.Response(body=_encoder.encode(done), content_type="application/json")
        return await self._stream(request, call, done, item, prompt, n)

    async def _stream(
        self,
        request: web.Request,
        call: ResponsesRequest,
        done: dict[str, Any],
        item: dict[str, Any],
        prompt: text.Prompt,
        n: int,
    ) -> web.StreamResponse:
        # Every event is numbered in the order it is sent: the head's, the deltas' (made as they
        # are sent), then the closing ones'.
        seq = itertools.count()

        def event(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(seq), **fields})

        begun = {**done, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
        head = event("response.created", response=begun) + event("response.in_progress", response=begun)
        item_id = item["id"]
        if item["type"] == "function_call":
            opened = {**item, "arguments": "", "status": "in_progress"}
            head += event("response.output_item.added", output_index=0, item=opened)
            arguments = item["arguments"]
            deltas = [arguments[i : i + 8] for i in range(0, len(arguments), 8)]
            kind, extra = "response.function_call_arguments.delta", {}
            done_args = {"item_id": item_id, "output_index": 0, "arguments": arguments}
            closing: list[tuple[str, dict[str, Any]]] = [("response.function_call_arguments.done", done_args)]
        else:
            part = item["content"][0]
            opened = {**item, "status": "in_progress", "content": []}
            head += event("response.output_item.added", output_index=0, item=opened)
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            head += event("response.content_part.added", **where, part={**part, "text": ""})
            deltas = [token.decode() for token in text.completion_tokens(prompt.start, n)]
            kind, extra = "response.output_text.delta", {"content_index": 0, "logprobs": []}
            closing = [
                ("response.output_text.done", {**where, "text": part["text"], "logprobs": []}),
                ("response.content_part.done", {**where, "part": part}),
            ]
        closing += [
            ("response.output_item.done", {"output_index": 0, "item": item}),
            (f"response.{done['status']}", {"response": done}),
        ]
        base = next(seq)
        fields = {"item_id": item_id, "output_index": 0, **extra}
        chunks = (_sse({"type": kind, "sequence_number": base + i, **fields, "delta": d}) for i, d in enumerate(deltas))
        seq = itertools.count(base + len(deltas))
        tail = b"".join(event(name, **more) for name, more in closing)
        count = len(deltas)
        return await stream_out(request, self.settings, head, chunks, count, tail)
