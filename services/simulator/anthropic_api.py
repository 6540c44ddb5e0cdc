"""`POST /v1/messages` (streamed: its exact event sequence) and `POST /v1/messages/count_tokens`,
in the Anthropic Messages API's shapes."""

import itertools
import re
import secrets
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from services.simulator import text, tools
from services.simulator.common import (
    MAX_TOKENS,
    BadRequest,
    ProtocolApi,
    Refusals,
    decode,
    generation_time,
    stream_out,
)


class Block(msgspec.Struct):
    type: str
    text: str | None = None


class Message(msgspec.Struct):
    role: Literal["user", "assistant", "system"]  # Claude Code sends system turns among its messages
    content: str | list[Block]


class Tool(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    input_schema: Any = None


class ToolChoice(msgspec.Struct):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None


class MessagesRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    system: str | list[Block] | None = None
    stream: bool | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] | None = None


class CountTokensRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    system: str | list[Block] | None = None


class Usage(msgspec.Struct, kw_only=True):
    input_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int
    output_tokens: int


class TextBlock(msgspec.Struct, kw_only=True):
    type: str = "text"
    text: str


class ToolUseBlock(msgspec.Struct, kw_only=True):
    type: str = "tool_use"
    id: str
    name: str
    input: Any


class MessageOut(msgspec.Struct, kw_only=True):
    id: str
    type: str = "message"
    role: str = "assistant"
    model: str
    content: list[TextBlock | ToolUseBlock]
    stop_reason: str | None
    stop_sequence: str | None = None
    usage: Usage


class ErrorDetail(msgspec.Struct):
    type: str
    message: str


class ErrorBody(msgspec.Struct, kw_only=True):
    type: str = "error"
    error: ErrorDetail


_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountTokensRequest)
_encoder = msgspec.json.Encoder()
_PREFIX = secrets.token_hex(6)
_ids = itertools.count()
_INDEX = re.compile(r"\[(\d+)\]")


def error(status: int, type_: str, message: str) -> web.Response:
    """Anthropic's error shape: {"type": "error", "error": {"type", "message"}}."""
    body = _encoder.encode(ErrorBody(error=ErrorDetail(type_, message)))
    return web.Response(body=body, status=status, content_type="application/json")


def _pieces(content: str | list[Block] | None, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    pieces = []
    for i, block in enumerate(content):
        if block.type == "text":
            if block.text is None:
                raise BadRequest(f"{where}.{i}.text: Field required")
            pieces.append(block.text)
    return pieces


def parse(body: bytes) -> tuple[MessagesRequest, text.Prompt]:
    request = decode(_decoder, body)
    return request, _prompt(request)


def _prompt(request: MessagesRequest | CountTokensRequest) -> text.Prompt:
    messages = [_pieces(m.content, f"messages.{i}.content") for i, m in enumerate(request.messages)]
    last_user: list[str] = next(
        (messages[i] for i in range(len(messages) - 1, -1, -1) if request.messages[i].role == "user"), []
    )
    if request.system is not None:
        messages.insert(0, _pieces(request.system, "system"))
    return text.analyse(request.model, messages, last_user)


def _event(name: bytes, data: bytes) -> bytes:
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


def wrong_vendor(model: str) -> web.Response:
    """What Anthropic's API answers for a model it does not serve (another vendor's)."""
    return error(404, "not_found_error", f"model: {model}")


def bad_request(exc: BadRequest) -> web.Response:
    kind = "request_too_large" if exc.status == 413 else "invalid_request_error"
    return error(exc.status, kind, _INDEX.sub(r".\1", exc.message))  # Anthropic writes messages.0.role


REFUSALS = Refusals(lambda: error(401, "authentication_error", "invalid x-api-key"), bad_request, wrong_vendor)


def _parse_count(body: bytes) -> tuple[CountTokensRequest, text.Prompt]:
    counted = decode(_count_decoder, body)
    return counted, _prompt(counted)


class AnthropicApi(ProtocolApi):
    refusals = REFUSALS

    def routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_post(prefix + "/v1/messages", self.messages)
        app.router.add_post(prefix + "/v1/messages/count_tokens", self.count_tokens)

    async def count_tokens(self, request: web.Request) -> web.Response:
        """The prompt's tokens as /v1/messages would count them (cached ones included)."""
        opened = await self.opening(request, "messages", _parse_count, lambda parsed: parsed[0].model)
        if isinstance(opened, web.Response):
            return opened
        _, prompt = opened
        return web.Response(body=_encoder.encode({"input_tokens": prompt.tokens}), content_type="application/json")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        opened = await self.opening(request, "messages", parse, lambda parsed: parsed[0].model)
        if isinstance(opened, web.Response):
            return opened
        call, prompt = opened
        n = text.completion_length(prompt, call.max_tokens)
        stop_reason = "max_tokens" if n == call.max_tokens else "end_turn"
        stop_sequence = None
        if (cut := text.stop_at(prompt.start, n, call.stop_sequences or [])) is not None:
            n, stop_sequence, stop_reason = cut[0], cut[1], "stop_sequence"
        message_id = f"msg_sim{_PREFIX}{next(_ids):012x}"
        input_tokens = prompt.tokens - prompt.cached
        if (tool_call := _tool_call(call)) is not None:
            return await self._tool_use(request, call, prompt, tool_call, message_id)
        if call.stream:
            head, chunks, tail = _stream_parts(
                message_id, call.model, prompt, input_tokens, n, stop_reason, stop_sequence
            )
            return await stream_out(request, self.settings, head, chunks, n, tail)
        await generation_time(self.settings, n)
        usage = Usage(input_tokens=input_tokens, cache_read_input_tokens=prompt.cached, output_tokens=n)
        content: list[TextBlock | ToolUseBlock] = [TextBlock(text=text.completion_text(prompt.start, n))]
        body = MessageOut(
            id=message_id, model=call.model, content=content, stop_reason=stop_reason, stop_sequence=stop_sequence,
            usage=usage,
        )  # fmt: skip
        return web.Response(body=_encoder.encode(body), content_type="application/json")

    async def _tool_use(
        self, request: web.Request, call: MessagesRequest, prompt: text.Prompt, tool: tools.ToolCall, message_id: str
    ) -> web.StreamResponse:
        usage = Usage(
            input_tokens=prompt.tokens - prompt.cached, cache_read_input_tokens=prompt.cached, output_tokens=tool.tokens
        )
        block = ToolUseBlock(id=f"toolu_sim{_PREFIX}{next(_ids):012x}", name=tool.name, input={})
        if not call.stream:
            await generation_time(self.settings, tool.tokens)
            block.input = msgspec.json.decode(tool.arguments)
            body = MessageOut(id=message_id, model=call.model, content=[block], stop_reason="tool_use", usage=usage)
            return web.Response(body=_encoder.encode(body), content_type="application/json")
        start = MessageOut(
            id=message_id, model=call.model, content=[], stop_reason=None,
            usage=msgspec.structs.replace(usage, output_tokens=1),
        )  # fmt: skip
        head = _event(b"message_start", b'{"type":"message_start","message":' + _encoder.encode(start) + b"}")
        head += _event(
            b"content_block_start",
            b'{"type":"content_block_start","index":0,"content_block":' + _encoder.encode(block) + b"}",
        )
        pieces = [tool.arguments[i : i + 8] for i in range(0, len(tool.arguments), 8)]
        chunks = (
            _event(b"content_block_delta", _encoder.encode(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": p}}
            ))
            for p in pieces
        )  # fmt: skip
        delta = {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                 "usage": {"output_tokens": tool.tokens}}  # fmt: skip
        tail = (
            _event(b"content_block_stop", b'{"type":"content_block_stop","index":0}')
            + _event(b"message_delta", _encoder.encode(delta))
            + _event(b"message_stop", b'{"type":"message_stop"}')
        )
        return await stream_out(request, self.settings, head, chunks, len(pieces), tail)


def _tool_call(call: MessagesRequest) -> tools.ToolCall | None:
    """services.simulator.tools' rule, with Anthropic's tool_choice and its tool results (a user
    message of tool_result blocks is no question from the user)."""
    offered = [tools.Offered(t.name, t.input_schema) for t in call.tools or ()]
    choice = call.tool_choice
    forced = (
        None if choice is None or choice.type == "auto"
        else "*" if choice.type == "any"
        else "none" if choice.type == "none"
        else choice.name
    )  # fmt: skip
    last = next((m for m in reversed(call.messages) if m.role != "system"), call.messages[-1])
    blocks = last.content if isinstance(last.content, list) else []
    last_is_user = last.role == "user" and not any(b.type == "tool_result" for b in blocks)
    said = last.content if isinstance(last.content, str) else " ".join(b.text or "" for b in blocks)
    return tools.choose(offered, forced, last_is_user, said)


def _stream_parts(
    message_id: str,
    model: str,
    prompt: text.Prompt,
    input_tokens: int,
    n: int,
    stop_reason: str,
    stop_sequence: str | None = None,
) -> tuple[bytes, Iterator[bytes], bytes]:
    """message_start, content_block_start, ping; a text_delta per token; content_block_stop,
    message_delta (stop reason, output tokens), message_stop: the sequence the Messages API sends."""
    usage = Usage(input_tokens=input_tokens, cache_read_input_tokens=prompt.cached, output_tokens=1)
    start = MessageOut(id=message_id, model=model, content=[], stop_reason=None, usage=usage)
    head = b"".join(
        (
            _event(b"message_start", b'{"type":"message_start","message":' + _encoder.encode(start) + b"}"),
            _event(
                b"content_block_start",
                b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
            ),
            _event(b"ping", b'{"type":"ping"}'),
        )
    )
    token_head = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"'
    )
    token_tail = b'"}}\n\n'
    tail = b"".join(
        (
            _event(b"content_block_stop", b'{"type":"content_block_stop","index":0}'),
            _event(
                b"message_delta",
                b'{"type":"message_delta","delta":{"stop_reason":"'
                + stop_reason.encode()
                + b'","stop_sequence":'
                + _encoder.encode(stop_sequence)
                + b'},"usage":{"output_tokens":'
                + str(n).encode()
                + b"}}",
            ),
            _event(b"message_stop", b'{"type":"message_stop"}'),
        )
    )
    chunks = (token_head + token + token_tail for token in text.completion_tokens(prompt.start, n))
    return head, chunks, tail
