"""Protocol translation between the protocols clients speak to the gateway and the ones its
upstreams speak: pure functions and tables, no I/O (services.gateway.pipeline does the I/O and
bills from the upstream's own usage report, whatever the client's protocol). The six pairs:
chat <-> messages (chat_messages), Responses -> chat and, by way of chat, Responses -> messages
(responses), chat -> Responses and, by way of chat, messages -> Responses (chat_responses).

`plan` decides, for a call's route and the protocols its upstream speaks (FLOWPLAN_UPSTREAMS),
whether and how the call is translated."""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Protocol

import msgspec

from services.gateway.translate import chat_messages, chat_responses, completions, responses, responses_stream
from services.gateway.translate.responses import Refused

__all__ = ["Refused", "StreamTranslator", "Translation", "plan"]
from services.gateway.usage import Tokens

Wire = Literal["openai", "anthropic"]
PROTOCOL_OF = {"/v1/chat/completions": "chat", "/v1/messages": "messages", "/v1/responses": "responses"}
PATH_OF = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}
WIRE_OF: dict[str, Wire] = {"chat": "openai", "messages": "anthropic", "responses": "openai"}
_encode = msgspec.json.Encoder().encode


class StreamTranslator(Protocol):
    def feed(self, data: Any) -> bytes:
        """The client's events for one upstream event (its decoded JSON, None for [DONE])."""

    def finish(self, tokens: Tokens) -> bytes:
        """The client's closing events, carrying the usage the call was billed for."""


class Translation:
    """One call's translation: the upstream request, and how its answer goes back."""

    def __init__(
        self,
        upstream: str,
        body: dict[str, Any],
        answer: Callable[[dict[str, Any], str, int, Tokens], dict[str, Any]],
        stream: Callable[[str, int], StreamTranslator],
    ) -> None:
        self.upstream = upstream
        """The protocol the upstream is sent (services.gateway.protocols names its adapter)."""
        self.upstream_path, self.upstream_api = PATH_OF[upstream], WIRE_OF[upstream]
        self.body = body
        """The request in the upstream's protocol."""
        self._answer, self._stream = answer, stream

    def answer(self, data: dict[str, Any], call_id: str, created: int, tokens: Tokens) -> dict[str, Any]:
        return self._answer(data, call_id, created, tokens)

    def stream(self, call_id: str, created: int) -> StreamTranslator:
        return self._stream(call_id, created)


class _ResponsesStream:
    def __init__(self, request: dict[str, Any], call_id: str, created: int) -> None:
        self._events = responses_stream.StreamToResponses(request, "resp_" + call_id, created)

    def feed(self, data: Any) -> bytes:
        return responses_stream.sse(self._events.feed(data), _encode)

    def finish(self, tokens: Tokens) -> bytes:
        usage = responses.usage(tokens.input + tokens.cached, tokens.cached, tokens.output)
        return responses_stream.sse(self._events.finish(usage), _encode)


class _ByWayOfChat:
    """Upstream events -> chat chunks -> the client's events, event by event."""

    def __init__(self, chunks: completions.ChunkStream, client: StreamTranslator) -> None:
        self._chunks, self._client = chunks, client

    def feed(self, data: Any) -> bytes:
        return b"".join(self._client.feed(chunk) for chunk in self._chunks.chunks(data))

    def finish(self, tokens: Tokens) -> bytes:
        closing = b"".join(self._client.feed(chunk) for chunk in self._chunks.final_chunks(tokens))
        return closing + self._client.finish(tokens)


class _Back(NamedTuple):
    """How a chat answer goes back to a client speaking another protocol."""

    answer: Callable[[dict[str, Any], str, int, Tokens], dict[str, Any]]
    stream: Callable[[str, int], StreamTranslator]


def _back(protocol: str, body: dict[str, Any]) -> _Back:
    if protocol == "responses":
        return _Back(
            lambda completion, call_id, created, _: responses.from_chat(completion, body, "resp_" + call_id, created),
            lambda call_id, created: _ResponsesStream(body, call_id, created),
        )
    return _Back(
        lambda completion, call_id, _, tokens: chat_messages.chat_to_message(
            completion, body, "msg_" + call_id, tokens
        ),
        lambda call_id, _: chat_messages.ChatStreamToMessages(body, "msg_" + call_id),
    )


OVER = {"chat": ("messages", "responses"), "messages": ("chat", "responses"), "responses": ("chat", "messages")}
"""A client's protocol -> the upstream protocols it is translated to, the first one spoken."""
TO_CHAT: dict[str, Callable[[dict[str, Any]], dict[str, Any] | Refused]] = {
    "messages": chat_messages.messages_to_chat,
    "responses": responses.to_chat,
}


class _Over(NamedTuple):
    """Chat over one upstream protocol: the request in it, its answer as a chat completion and
    its stream as chat chunks."""

    request: Callable[[dict[str, Any]], dict[str, Any] | Refused]
    answer: Callable[[dict[str, Any], dict[str, Any], str, int, Tokens], dict[str, Any]]
    chunks: Callable[[dict[str, Any], str, int], completions.ChunkStream]


CHAT_OVER = {
    "messages": _Over(
        chat_messages.chat_to_messages, chat_messages.message_to_chat, chat_messages.MessagesStreamToChat
    ),
    "responses": _Over(
        chat_responses.chat_to_responses, chat_responses.response_to_chat, chat_responses.ResponsesStreamToChat
    ),
}


def plan(path: str, body: dict[str, Any], speaks: frozenset[str]) -> Translation | Refused | None:
    """None when the upstream speaks the client's protocol (the call passes through as it is).
    Every translation goes by way of chat: the client's request to chat, chat to the upstream's
    protocol, and its answer back the same way."""
    protocol = PROTOCOL_OF.get(path)
    if protocol is None or protocol in speaks:
        return None
    upstream = next((p for p in OVER[protocol] if p in speaks), None)
    if upstream is None and protocol != "responses":  # a Responses request is checked first
        return Refused(
            f"model: this model's upstream speaks neither {protocol} nor a protocol it translates to", "model"
        )
    chat = TO_CHAT[protocol](body) if protocol in TO_CHAT else body
    if isinstance(chat, Refused):
        return chat
    if upstream is None:
        return Refused("model: this model's upstream speaks neither chat completions nor messages", "model")
    if upstream == "chat":
        back = _back(protocol, body)
        return Translation("chat", chat, back.answer, back.stream)
    return _chat_over(upstream, chat, _back(protocol, body) if protocol != "chat" else None)


def _chat_over(upstream: str, chat: dict[str, Any], back: _Back | None) -> Translation | Refused:
    """A chat request to an upstream speaking `upstream`; with `back`, the answer goes on from chat."""
    over = CHAT_OVER[upstream]
    call = over.request(chat)
    if isinstance(call, Refused):
        return call

    def completion(data: dict[str, Any], call_id: str, created: int, tokens: Tokens) -> dict[str, Any]:
        return over.answer(data, chat, "chatcmpl-" + call_id, created, tokens)

    def chunks(call_id: str, created: int) -> completions.ChunkStream:
        return over.chunks(chat, "chatcmpl-" + call_id, created)

    if back is None:
        return Translation(upstream, call, completion, chunks)
    return Translation(
        upstream,
        call,
        lambda data, call_id, created, tokens: back.answer(
            completion(data, call_id, created, tokens), call_id, created, tokens
        ),
        lambda call_id, created: _ByWayOfChat(chunks(call_id, created), back.stream(call_id, created)),
    )
