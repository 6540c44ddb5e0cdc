"""Protocol translation between the protocols clients speak to the gateway and the ones its
upstreams speak: pure functions and tables, no I/O (services.gateway.pipeline does the I/O and
bills from the upstream's own usage report, whatever the client's protocol). The six pairs:
chat <-> messages (chat_messages), Responses -> chat and, by way of chat, Responses -> messages
(responses), chat -> Responses and, by way of chat, messages -> Responses (chat_responses).

`plan` decides, for a call's route and the protocols its upstream speaks (FLOWPLAN_UPSTREAMS),
whether and how the call is translated."""

from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from services.gateway.translate import chat_messages, chat_responses, responses
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
        self._events = responses.StreamToResponses(request, "resp_" + call_id, created)

    def feed(self, data: Any) -> bytes:
        return responses.sse(self._events.feed(data), _encode)

    def finish(self, tokens: Tokens) -> bytes:
        usage = responses.usage(tokens.input + tokens.cached, tokens.cached, tokens.output)
        return responses.sse(self._events.finish(usage), _encode)


class _ResponsesOverMessages:
    """Messages events -> chat chunks -> Responses events, chunk by chunk."""

    def __init__(self, request: dict[str, Any], chat: dict[str, Any], call_id: str, created: int) -> None:
        self._chunks = chat_messages.MessagesStreamToChat(chat, "chatcmpl-" + call_id, created)
        self._responses = _ResponsesStream(request, call_id, created)

    def feed(self, data: Any) -> bytes:
        return b"".join(self._responses.feed(chunk) for chunk in self._chunks.chunks(data))

    def finish(self, tokens: Tokens) -> bytes:
        closing = b"".join(self._responses.feed(chunk) for chunk in self._chunks.final_chunks(tokens))
        return closing + self._responses.finish(tokens)


def _responses(body: dict[str, Any], speaks: frozenset[str]) -> Translation | Refused:
    chat = responses.to_chat(body)
    if isinstance(chat, Refused):
        return chat
    if "chat" in speaks:
        return Translation(
            "chat",
            chat,
            lambda data, call_id, created, _: responses.from_chat(data, body, "resp_" + call_id, created),
            lambda call_id, created: _ResponsesStream(body, call_id, created),
        )
    if "messages" not in speaks:
        return Refused("model: this model's upstream speaks neither chat completions nor messages", "model")
    call = chat_messages.chat_to_messages(chat)
    if isinstance(call, Refused):
        return call

    def answer(data: dict[str, Any], call_id: str, created: int, tokens: Tokens) -> dict[str, Any]:
        completion = chat_messages.message_to_chat(data, chat, "chatcmpl-" + call_id, created, tokens)
        return responses.from_chat(completion, body, "resp_" + call_id, created)

    return Translation(
        "messages", call, answer, lambda call_id, created: _ResponsesOverMessages(body, chat, call_id, created)
    )


def plan(path: str, body: dict[str, Any], speaks: frozenset[str]) -> Translation | Refused | None:
    """None when the upstream speaks the client's protocol (the call passes through as it is)."""
    protocol = PROTOCOL_OF.get(path)
    if protocol is None or protocol in speaks:
        return None
    if protocol == "responses":
        return _responses(body, speaks)
    if protocol == "messages" and "chat" in speaks:
        chat = chat_messages.messages_to_chat(body)
        if isinstance(chat, Refused):
            return chat
        return Translation(
            "chat",
            chat,
            lambda data, call_id, _, tokens: chat_messages.chat_to_message(data, body, "msg_" + call_id, tokens),
            lambda call_id, _: chat_messages.ChatStreamToMessages(body, "msg_" + call_id),
        )
    if protocol == "messages" and "responses" in speaks:
        return _messages_over_responses(body)
    if protocol == "chat" and "messages" in speaks:
        call = chat_messages.chat_to_messages(body)
        if isinstance(call, Refused):
            return call
        return Translation(
            "messages",
            call,
            lambda data, call_id, created, tokens: chat_messages.message_to_chat(
                data, body, "chatcmpl-" + call_id, created, tokens
            ),
            lambda call_id, created: chat_messages.MessagesStreamToChat(body, "chatcmpl-" + call_id, created),
        )
    if protocol == "chat" and "responses" in speaks:
        call = chat_responses.chat_to_responses(body)
        if isinstance(call, Refused):
            return call
        return Translation(
            "responses",
            call,
            lambda data, call_id, created, tokens: chat_responses.response_to_chat(
                data, body, "chatcmpl-" + call_id, created, tokens
            ),
            lambda call_id, created: chat_responses.ResponsesStreamToChat(body, "chatcmpl-" + call_id, created),
        )
    return Refused(f"model: this model's upstream speaks neither {protocol} nor a protocol it translates to", "model")


class _MessagesOverResponses:
    """Responses events -> chat chunks -> Messages events, event by event."""

    def __init__(self, request: dict[str, Any], chat: dict[str, Any], call_id: str, created: int) -> None:
        self._chunks = chat_responses.ResponsesStreamToChat(chat, "chatcmpl-" + call_id, created)
        self._messages = chat_messages.ChatStreamToMessages(request, "msg_" + call_id)

    def feed(self, data: Any) -> bytes:
        return b"".join(self._messages.feed(chunk) for chunk in self._chunks.chunks(data))

    def finish(self, tokens: Tokens) -> bytes:
        closing = b"".join(self._messages.feed(chunk) for chunk in self._chunks.final_chunks(tokens))
        return closing + self._messages.finish(tokens)


def _messages_over_responses(body: dict[str, Any]) -> Translation | Refused:
    """A messages client to an upstream speaking only Responses: by way of chat, both ways."""
    chat = chat_messages.messages_to_chat(body)
    if isinstance(chat, Refused):
        return chat
    call = chat_responses.chat_to_responses(chat)
    if isinstance(call, Refused):
        return call

    def answer(data: dict[str, Any], call_id: str, created: int, tokens: Tokens) -> dict[str, Any]:
        completion = chat_responses.response_to_chat(data, chat, "chatcmpl-" + call_id, created, tokens)
        return chat_messages.chat_to_message(completion, body, "msg_" + call_id, tokens)

    return Translation(
        "responses", call, answer, lambda call_id, created: _MessagesOverResponses(body, chat, call_id, created)
    )
