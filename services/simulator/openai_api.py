"""`POST /v1/chat/completions` and `GET /v1/models`, in the OpenAI API's shapes."""

import itertools
import secrets
import time
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
    key_ok,
    stream_out,
)
from services.simulator.settings import SimulatorSettings

DEFAULT_MAX_TOKENS = 4096
"""max_tokens when a chat request names none (replies end by themselves well before it)."""
MODELS = ("sim-chat", "gpt-4o-mini", "gpt-4.1", "claude-sonnet-4-5", "gpt-image-1")
"""Listed by GET /v1/models; any model name is accepted in requests."""
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
SYSTEM = ("system", "developer")


class Part(msgspec.Struct):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct):
    role: Role
    content: str | list[Part] | None = None


class FunctionDef(msgspec.Struct):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    parameters: Any = None


class ToolDef(msgspec.Struct):
    type: str
    function: FunctionDef | None = None


class NamedFunction(msgspec.Struct):
    name: str


class ToolChoice(msgspec.Struct):
    type: str
    function: NamedFunction | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[ToolDef] | None = None
    stop: str | Annotated[list[str], msgspec.Meta(max_length=4)] | None = None
    tool_choice: Literal["none", "auto", "required"] | ToolChoice | None = None


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class CalledFunction(msgspec.Struct):
    name: str
    arguments: str


class ToolCallOut(msgspec.Struct, kw_only=True):
    id: str
    type: str = "function"
    function: CalledFunction


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None


class Choice(msgspec.Struct, kw_only=True):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(msgspec.Struct, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "flowplan-simulator"


class ModelList(msgspec.Struct, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


_decoder = msgspec.json.Decoder(ChatRequest)
_encoder = msgspec.json.Encoder()
_PREFIX = secrets.token_hex(4)
_ids = itertools.count()


def error(
    status: int, message: str, param: str | None = None, type_: str = "invalid_request_error", code: str | None = None
) -> web.Response:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


def unauthorized() -> web.Response:
    return error(401, "Incorrect API key provided.", code="invalid_api_key")


def wrong_vendor(model: str) -> web.Response:
    """What OpenAI's API answers for a model it does not serve (another vendor's)."""
    message = f"The model `{model}` does not exist or you do not have access to it."
    return error(404, message, code="model_not_found")


def bad_request(exc: BadRequest) -> web.Response:
    return error(exc.status, exc.message, exc.param)


def _pieces(content: str | list[Part] | None, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    pieces = []
    for i, part in enumerate(content):
        if part.type == "text":
            if part.text is None:
                raise BadRequest(f"{where}[{i}].text: Field required", f"{where}[{i}].text")
            pieces.append(part.text)
    return pieces


def parse(body: bytes) -> tuple[ChatRequest, text.Prompt, int, tools.ToolCall | None]:
    """The request, its prompt, its max_tokens and the tool call it gets (services.simulator.tools'
    rule) if any; a BadRequest when it is not valid."""
    request = decode(_decoder, body)
    messages = [_pieces(m.content, f"messages[{i}].content") for i, m in enumerate(request.messages)]
    last_user: list[str] = next(
        (messages[i] for i in range(len(messages) - 1, -1, -1) if request.messages[i].role == "user"), []
    )
    prompt = text.analyse(request.model, messages, last_user)
    offered = [tools.Offered(t.function.name, t.function.parameters) for t in request.tools or () if t.function]
    choice = request.tool_choice
    forced = (
        None if choice is None or choice == "auto"
        else "*" if choice == "required"
        else "none" if choice == "none"
        else choice.function.name if isinstance(choice, ToolChoice) and choice.function
        else None
    )  # fmt: skip
    # System turns after the question (Claude Code adds its environment last) do not answer it.
    last = next((i for i in range(len(messages) - 1, -1, -1) if request.messages[i].role not in SYSTEM), -1)
    last_is_user = request.messages[last].role == "user"
    call = tools.choose(offered, forced, last_is_user, " ".join(messages[last]))
    return request, prompt, request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS, call


def _usage(prompt: text.Prompt, completion: int) -> Usage:
    return Usage(prompt.tokens, completion, prompt.tokens + completion, PromptTokensDetails(prompt.cached))


REFUSALS = Refusals(unauthorized, bad_request, wrong_vendor)


def _parse_chat(body: bytes) -> tuple[ChatRequest, text.Prompt, int, tools.ToolCall | None, int]:
    chat, prompt, limit, call = parse(body)
    return chat, prompt, limit, call, text.completion_length(prompt, limit)


class OpenAIApi(ProtocolApi):
    refusals = REFUSALS

    def __init__(self, settings: SimulatorSettings, any_vendor: bool = False) -> None:
        super().__init__(settings, any_vendor)
        self._models = _encoder.encode(ModelList(data=[ModelCard(id=m) for m in MODELS]))

    def routes(self, app: web.Application, prefix: str = "") -> None:
        app.router.add_post(prefix + "/v1/chat/completions", self.chat)
        app.router.add_get(prefix + "/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        if not key_ok(request, self.settings.require_key):
            return unauthorized()
        return web.Response(body=self._models, content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        opened = await self.opening(request, "chat", _parse_chat, lambda parsed: parsed[0].model)
        if isinstance(opened, web.Response):
            return opened
        chat, prompt, limit, call, n = opened
        finish = "length" if n == limit else "stop"
        stops = [chat.stop] if isinstance(chat.stop, str) else chat.stop or []
        if (cut := text.stop_at(prompt.start, n, stops)) is not None:
            n, finish = cut[0], "stop"
        usage = _usage(prompt, n)
        completion_id = f"chatcmpl-{_PREFIX}{next(_ids):012x}"
        created = int(time.time())
        if call is not None:
            return await self._tool_call(request, chat, prompt, call, completion_id, created)
        if chat.stream:
            include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
            head, chunks, tail = _stream_parts(
                completion_id, created, chat.model, prompt, n, finish, usage if include_usage else None
            )
            return await stream_out(request, self.settings, head, chunks, n, tail)
        await generation_time(self.settings, n)
        message = AssistantMessage(content=text.completion_text(prompt.start, n))
        choice = Choice(message=message, finish_reason=finish)
        body = ChatCompletion(id=completion_id, created=created, model=chat.model, choices=[choice], usage=usage)
        return web.Response(body=_encoder.encode(body), content_type="application/json")

    async def _tool_call(
        self,
        request: web.Request,
        chat: ChatRequest,
        prompt: text.Prompt,
        call: tools.ToolCall,
        completion_id: str,
        created: int,
    ) -> web.StreamResponse:
        usage = _usage(prompt, call.tokens)
        call_id = f"call_{_PREFIX}{next(_ids):012x}"
        if not chat.stream:
            await generation_time(self.settings, call.tokens)
            function = CalledFunction(call.name, call.arguments)
            message = AssistantMessage(content=None, tool_calls=[ToolCallOut(id=call_id, function=function)])
            choice = Choice(message=message, finish_reason="tool_calls")
            body = ChatCompletion(id=completion_id, created=created, model=chat.model, choices=[choice], usage=usage)
            return web.Response(body=_encoder.encode(body), content_type="application/json")
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)

        def chunk(delta: dict[str, Any] | None, finish: str | None, usage_out: Usage | None = None) -> bytes:
            body: dict[str, Any] = {
                "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": chat.model,
                "system_fingerprint": None,
                "choices": [] if delta is None else [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }  # fmt: skip
            if include_usage:
                body["usage"] = usage_out
            return b"data: " + _encoder.encode(body) + b"\n\n"

        opening = {"index": 0, "id": call_id, "type": "function", "function": {"name": call.name, "arguments": ""}}
        head = chunk({"role": "assistant", "content": None, "tool_calls": [opening]}, None)
        pieces = [call.arguments[i : i + 8] for i in range(0, len(call.arguments), 8)]
        chunks = (chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}, None) for p in pieces)
        tail = chunk({}, "tool_calls") + (chunk(None, None, usage) if include_usage else b"") + b"data: [DONE]\n\n"
        return await stream_out(request, self.settings, head, chunks, len(pieces), tail)


def _stream_parts(
    completion_id: str, created: int, model: str, prompt: text.Prompt, n: int, finish: str, usage: Usage | None
) -> tuple[bytes, Iterator[bytes], bytes]:
    """The chunks of a stream, from byte templates: the token words need no JSON escaping."""
    prefix = b"".join(
        (
            b'data: {"id":',
            _encoder.encode(completion_id),
            b',"object":"chat.completion.chunk","created":',
            str(created).encode(),
            b',"model":',
            _encoder.encode(model),
            b',"system_fingerprint":null,"choices":[',
        )
    )
    end = b',"usage":null}\n\n' if usage is not None else b"}\n\n"
    head = prefix + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]' + end
    token_head = prefix + b'{"index":0,"delta":{"content":"'
    token_tail = b'"},"logprobs":null,"finish_reason":null}]' + end
    tail = prefix + b'{"index":0,"delta":{},"logprobs":null,"finish_reason":"' + finish.encode() + b'"}]' + end
    if usage is not None:
        tail += prefix + b'],"usage":' + _encoder.encode(usage) + b"}\n\n"
    tail += b"data: [DONE]\n\n"
    chunks = (token_head + token + token_tail for token in text.completion_tokens(prompt.start, n))
    return head, chunks, tail
