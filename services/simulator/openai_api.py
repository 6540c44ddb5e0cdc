"""`POST /v1/chat/completions` and `GET /v1/models`, in the OpenAI API's shapes."""

import itertools
import secrets
import time
from collections.abc import Iterator
from typing import Annotated, Literal

import msgspec
from aiohttp import web

from services.simulator import text
from services.simulator.common import MAX_TOKENS, BadRequest, decode, generation_time, key_ok, read_body, stream_out
from services.simulator.settings import SimulatorSettings

DEFAULT_MAX_TOKENS = 4096
"""max_tokens when a chat request names none (replies end by themselves well before it)."""
MODELS = ("sim-chat", "gpt-4o-mini", "gpt-4.1", "claude-sonnet-4-5", "gpt-image-1")
"""Listed by GET /v1/models; any model name is accepted in requests."""
MaxTokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_TOKENS)]
Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class Part(msgspec.Struct):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct):
    role: Role
    content: str | list[Part] | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class ChatRequest(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1)]
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class Usage(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantMessage(msgspec.Struct, kw_only=True):
    role: str = "assistant"
    content: str
    refusal: None = None


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


def parse(body: bytes) -> tuple[ChatRequest, text.Prompt, int]:
    """The request, its prompt and its max_tokens; a BadRequest when it is not valid."""
    request = decode(_decoder, body)
    messages = [_pieces(m.content, f"messages[{i}].content") for i, m in enumerate(request.messages)]
    last_user: list[str] = next(
        (messages[i] for i in range(len(messages) - 1, -1, -1) if request.messages[i].role == "user"), []
    )
    prompt = text.analyse(request.model, messages, last_user)
    return request, prompt, request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS


def _usage(prompt: text.Prompt, completion: int) -> Usage:
    return Usage(prompt.tokens, completion, prompt.tokens + completion, PromptTokensDetails(prompt.cached))


class OpenAIApi:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self._models = _encoder.encode(ModelList(data=[ModelCard(id=m) for m in MODELS]))

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)

    async def models(self, request: web.Request) -> web.Response:
        if not key_ok(request, self.settings.require_key):
            return unauthorized()
        return web.Response(body=self._models, content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        if not key_ok(request, self.settings.require_key):
            return unauthorized()
        try:
            chat, prompt, limit = parse(await read_body(request))
            n = text.completion_length(prompt, limit)
        except BadRequest as exc:
            return bad_request(exc)
        finish = "length" if n == limit else "stop"
        usage = _usage(prompt, n)
        completion_id = f"chatcmpl-{_PREFIX}{next(_ids):012x}"
        created = int(time.time())
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
