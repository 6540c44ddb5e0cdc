"""Reading a call's real usage from the upstream's own report, also from a stream as it passes.

Token counts are normalised to flowplan's: `input_tokens` are the uncached input tokens
(billed at the prompt price), `cached_tokens` the cache reads. OpenAI's prompt_tokens
include the cached ones; Anthropic's input_tokens exclude them (cache writes are billed
as input).
"""

from collections.abc import Iterator
from typing import Any, NamedTuple

import msgspec

from services.gateway.shapes import as_count, event_type, field

_json = msgspec.json.Decoder()


class Tokens(NamedTuple):
    input: int = 0
    output: int = 0
    cached: int = 0
    images: int = 0


def from_openai(usage: Any) -> Tokens:
    if not isinstance(usage, dict):
        return Tokens()
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
    cached = as_count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    prompt = as_count(usage.get("prompt_tokens", usage.get("input_tokens")))
    output = as_count(usage.get("completion_tokens", usage.get("output_tokens")))
    return Tokens(max(0, prompt - cached), output, min(cached, prompt))


NO_TOKENS = Tokens()


def from_anthropic(usage: Any, previous: Tokens = NO_TOKENS) -> Tokens:
    """Anthropic reports input in message_start and the running output total in message_delta."""
    if not isinstance(usage, dict):
        return previous
    written = as_count(usage.get("cache_creation_input_tokens"))
    return Tokens(
        input=as_count(usage["input_tokens"]) + written if "input_tokens" in usage else previous.input,
        output=as_count(usage["output_tokens"]) if "output_tokens" in usage else previous.output,
        cached=as_count(usage["cache_read_input_tokens"]) if "cache_read_input_tokens" in usage else previous.cached,
    )


class SseEvent(NamedTuple):
    raw: bytes
    """The event as it came, separator included: what the client is sent."""
    data: Any
    """The decoded JSON of its data line(s), or None ([DONE], comments, pings without JSON)."""


class SseSplitter:
    """Splits a byte stream into complete SSE events as soon as each one is whole."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> Iterator[SseEvent]:
        # Normalise line ends on the whole buffer: a chunk may end between a CR and its LF.
        buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        start = 0
        while (end := buffer.find(b"\n\n", start)) != -1:
            raw = buffer[start : end + 2]
            start = end + 2
            yield SseEvent(raw, data_of(raw))
        self._buffer = buffer[start:]

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


def data_of(raw: bytes) -> Any:
    if raw.startswith(b"data:") and raw.find(b"\n") == len(raw) - 2:  # one data line: nearly every event
        data = raw[5:-2].strip()
        if data == b"[DONE]":
            return None
        try:
            return _json.decode(data)
        except msgspec.DecodeError:
            return None
    lines = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    if not lines or lines == [b"[DONE]"]:
        return None
    try:
        return _json.decode(b"\n".join(lines))
    except msgspec.DecodeError:
        return None


RESPONSES_FINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
RESPONSES_DELTAS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta"})


class StreamUsage:
    """Follows a stream's events and keeps the usage they report. Where a stream broke off
    before its final report, the output is counted as one token per content delta seen."""

    def __init__(self, api: str) -> None:
        self.api = api
        """Whose events: "openai" (chat completions), "anthropic" (messages) or "responses"."""
        self.tokens = Tokens()
        self.output_reported = False
        self.deltas = 0

    def observe(self, data: Any) -> None:
        if not isinstance(data, dict):
            return
        if self.api == "anthropic":
            kind = event_type(data)
            if kind == "message_start":  # input (and a placeholder output) only
                self.tokens = from_anthropic(field(data.get("message"), "usage"), self.tokens)
            elif kind == "message_delta":  # the running output total
                self.tokens = from_anthropic(data.get("usage"), self.tokens)
                self.output_reported = True
            elif kind == "content_block_delta":
                self.deltas += 1
        elif self.api == "responses":  # the usage comes whole with the final response
            kind = event_type(data)
            if kind in RESPONSES_FINAL:
                usage = field(data.get("response"), "usage")
                if isinstance(usage, dict):
                    self.tokens = from_openai(usage)
                    self.output_reported = True
            elif kind in RESPONSES_DELTAS:
                self.deltas += 1
        elif data.get("usage"):
            self.tokens = from_openai(data["usage"])
            self.output_reported = True
        elif isinstance(choices := data.get("choices"), list) and any(_has_content(c) for c in choices):
            self.deltas += 1

    def final(self) -> Tokens:
        if self.output_reported:
            return self.tokens
        return self.tokens._replace(output=self.deltas)


def _has_content(choice: Any) -> bool:
    delta = choice.get("delta") if isinstance(choice, dict) else None
    return isinstance(delta, dict) and bool(delta.get("content"))
