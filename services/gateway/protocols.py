"""The protocols a metered call can be in, each as an adapter the call's pipeline
(services.gateway.pipeline) uses without knowing which one it is: how the upstream is addressed
in it, how its usage is read from a whole reply or from its stream, which stream events end the
answer, and in whose shape its errors are said.

An `Exchange` pairs the protocol the client speaks with the one its upstream is sent: the same
adapter when the upstream speaks it (passed through), else another one and the translation
between them (services.gateway.translate). A new protocol is one more adapter here and, when it
is to be translated, one more entry in translate.plan; the pipeline stays as it is."""

from typing import Any, ClassVar, Literal

import msgspec

from services.gateway import translate
from services.gateway.errors import Api
from services.gateway.shapes import event_type
from services.gateway.translate import Refused, StreamTranslator, Translation
from services.gateway.usage import RESPONSES_FINAL, StreamUsage, Tokens, from_anthropic, from_openai

ProtocolName = Literal["chat", "messages", "responses", "images"]
ANTHROPIC_FINAL = frozenset({"message_delta", "message_stop"})
_encode = msgspec.json.Encoder()


class Protocol:
    """One protocol's facts. The base is OpenAI's wire (bearer key, usage in `usage`)."""

    name: ClassVar[ProtocolName]
    path: ClassVar[str]
    api: ClassVar[Api] = "openai"
    """Whose error shape the client is answered in (services.gateway.errors.refusal)."""
    streams: ClassVar[bool] = True

    def headers(self, key: str, client_headers: Any) -> dict[str, str]:
        """The upstream request's headers: its credential and what the protocol requires."""
        return {"content-type": "application/json", "accept-encoding": "identity", "authorization": f"Bearer {key}"}

    def tokens(self, data: Any) -> Tokens:
        """The usage a whole (non-streamed) reply reports."""
        return from_openai(data.get("usage") if isinstance(data, dict) else None)

    def meter(self) -> StreamUsage:
        """What follows a stream's events and keeps the usage they report."""
        return StreamUsage(self.api)

    def is_final(self, data: Any, raw: bytes) -> bool:
        """An event that ends the stream (its stop reason, usage or terminator): held back until
        the call's usage is stored, so that a client never sees a finished stream that is not billed."""
        return False

    def ask_usage(self, body: dict[str, Any]) -> bool:
        """Make a streamed request report its usage; True when the client did not ask for it
        (the usage-only events are then kept from it, see `usage_only`)."""
        return False

    def usage_only(self, data: Any) -> bool:
        return False


class ChatCompletions(Protocol):
    name, path = "chat", "/v1/chat/completions"

    def is_final(self, data: Any, raw: bytes) -> bool:
        if not isinstance(data, dict):
            return data is None and b"[DONE]" in raw
        choices = data.get("choices")
        if not choices:
            return bool(data.get("usage"))
        return isinstance(choices, list) and any(isinstance(c, dict) and c.get("finish_reason") for c in choices)

    def ask_usage(self, body: dict[str, Any]) -> bool:
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return False
        body["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
        return True

    def usage_only(self, data: Any) -> bool:
        return isinstance(data, dict) and bool(data.get("usage")) and not data.get("choices")


class Messages(Protocol):
    name, path, api = "messages", "/v1/messages", "anthropic"

    def headers(self, key: str, client_headers: Any) -> dict[str, str]:
        headers = {
            "content-type": "application/json", "accept-encoding": "identity", "x-api-key": key,
            "anthropic-version": client_headers.get("anthropic-version", "2023-06-01"),
        }  # fmt: skip
        if beta := client_headers.get("anthropic-beta"):
            headers["anthropic-beta"] = beta
        return headers

    def tokens(self, data: Any) -> Tokens:
        return from_anthropic(data.get("usage") if isinstance(data, dict) else None)

    def is_final(self, data: Any, raw: bytes) -> bool:
        return isinstance(data, dict) and event_type(data) in ANTHROPIC_FINAL


class Responses(Protocol):
    """The Responses API: the usage comes whole in `response.completed` (or `.incomplete`, `.failed`)."""

    name, path = "responses", "/v1/responses"

    def meter(self) -> StreamUsage:
        return StreamUsage("responses")

    def is_final(self, data: Any, raw: bytes) -> bool:
        return isinstance(data, dict) and event_type(data) in RESPONSES_FINAL


class Images(Protocol):
    name, path, streams = "images", "/v1/images/generations", False

    def tokens(self, data: Any) -> Tokens:
        images = data.get("data") if isinstance(data, dict) else None
        return super().tokens(data)._replace(output=0, images=len(images) if isinstance(images, list) else 0)


CHAT, MESSAGES, RESPONSES, IMAGES = ChatCompletions(), Messages(), Responses(), Images()
BY_NAME: dict[str, Protocol] = {p.name: p for p in (CHAT, MESSAGES, RESPONSES, IMAGES)}
BY_PATH: dict[str, Protocol] = {p.path: p for p in BY_NAME.values()}


class Exchange:
    """One call's two sides: the client's protocol and the upstream's, and the translation
    between them when they differ."""

    def __init__(self, client: Protocol, upstream: Protocol, translation: Translation | None) -> None:
        self.client, self.upstream, self.translation = client, upstream, translation

    def upstream_request(self, raw: bytes, body: dict[str, Any], streaming: bool) -> tuple[bytes, bool]:
        """The bytes the upstream is sent, and whether the stream's usage-only events are the
        gateway's own (asked for here, so kept from the client)."""
        if self.translation is not None:
            return _encode.encode(self.translation.body), False
        if streaming and self.client.ask_usage(body):
            return _encode.encode(body), True
        return raw, False

    def answer(self, data: Any, payload: bytes, call_id: str, created: int, tokens: Tokens) -> bytes:
        """The client's whole answer: the upstream's bytes as they came, or translated."""
        if self.translation is None or not isinstance(data, dict):
            return payload
        return _encode.encode(self.translation.answer(data, call_id, created, tokens))

    def stream(self, call_id: str, created: int) -> StreamTranslator | None:
        return None if self.translation is None else self.translation.stream(call_id, created)


def exchange(client: Protocol, body: dict[str, Any], speaks: frozenset[str]) -> Exchange | Refused:
    """How a call in the client's protocol reaches an upstream speaking `speaks`: decided
    before admission, so a call that cannot be translated is a 400 and costs nothing."""
    translation = translate.plan(client.path, body, speaks)
    if isinstance(translation, Refused):
        return translation
    if translation is None:
        return Exchange(client, client, None)
    return Exchange(client, BY_NAME[translation.upstream], translation)
