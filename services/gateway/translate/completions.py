"""The chat completion side that every translation back to chat shares: the whole completion,
its usage block, and a stream's chunks (one choice; tool calls numbered in the order they
open; the usage chunk only when the client asked for it, stream_options.include_usage, as
OpenAI does), written as Server-Sent Events ending in [DONE]. Pure: no I/O.

chat_messages.MessagesStreamToChat and chat_responses.ResponsesStreamToChat are `ChunkStream`s
that say only which chunks an upstream event makes and what its finish reason is."""

import itertools
import json
from abc import ABC, abstractmethod
from typing import Any

from services.gateway.usage import Tokens

DONE = b"data: [DONE]\n\n"
_encode = json.JSONEncoder(separators=(",", ":")).encode


def usage(tokens: Tokens) -> dict[str, Any]:
    """A chat usage block (prompt_tokens include the cached ones, as OpenAI counts them)."""
    prompt = tokens.input + tokens.cached
    return {
        "prompt_tokens": prompt,
        "completion_tokens": tokens.output,
        "total_tokens": prompt + tokens.output,
        "prompt_tokens_details": {"cached_tokens": tokens.cached},
    }


def tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(
    request: dict[str, Any],
    completion_id: str,
    created: int,
    text: str,
    calls: list[dict[str, Any]],
    finish: str,
    tokens: Tokens,
) -> dict[str, Any]:
    """A whole chat completion with one choice."""
    reply: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": request.get("model"),
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
        "usage": usage(tokens),
    }


def sse(chunks: list[dict[str, Any]]) -> bytes:
    return b"".join(f"data: {_encode(c)}\n\n".encode() for c in chunks)


class ChunkStream(ABC):
    """An upstream's event stream as chat completion chunks, event by event. A subclass says
    which chunks one event makes (`chunks`, building them with the helpers here) and, at the
    end, the finish reason (`closing_reason`: None when the upstream broke off before it)."""

    def __init__(self, request: dict[str, Any], completion_id: str, created: int) -> None:
        self.request, self.completion_id, self.created = request, completion_id, created
        options = request.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self._calls: dict[int, int] = {}  # the upstream's index of a tool call -> its chat index
        self._count = itertools.count()

    @abstractmethod
    def chunks(self, event: Any) -> list[dict[str, Any]]:
        """The chat chunks one upstream event makes."""

    @abstractmethod
    def closing_reason(self) -> str | None:
        """The finish reason at the end, None when the upstream broke off before it."""

    def _chunk(self, delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.request.get("model"),
            "system_fingerprint": None,
            "choices": []
            if delta is None
            else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = usage
        return chunk

    def _role(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": ""})

    def _text(self, text: str) -> dict[str, Any]:
        return self._chunk({"content": text})

    def _call_opened(self, upstream_index: int, call_id: Any, name: Any, arguments: str) -> dict[str, Any]:
        index = self._calls[upstream_index] = next(self._count)
        return self._chunk({"tool_calls": [{"index": index, **tool_call(call_id, name, arguments)}]})

    def _arguments(self, upstream_index: int, arguments: str) -> dict[str, Any]:
        index = self._calls.get(upstream_index, 0)
        return self._chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments}}]})

    def final_chunks(self, tokens: Tokens) -> list[dict[str, Any]]:
        """The finish reason (unless the upstream broke off before it) and the asked-for usage."""
        finish = self.closing_reason()
        out = [self._chunk({}, finish)] if finish else []
        if self.include_usage:
            out.append(self._chunk(None, usage=usage(tokens)))
        return out

    def feed(self, event: Any) -> bytes:
        return sse(self.chunks(event))

    def finish(self, tokens: Tokens) -> bytes:
        return sse(self.final_chunks(tokens)) + DONE
