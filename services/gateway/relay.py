"""What a stream's client is sent of each chunk the upstream sends, and at the stream's end, while
the usage is read on the side: services.gateway.meter pumps each stream through one relay.

A stream the client gets in the upstream's own protocol (nothing to translate) goes on as it came,
but for its final events, held back until the call's usage is stored, and the usage-only events
the gateway asked for, kept from the client. `Relay` decodes every event and asks the client's
protocol what it is. Chat and messages streams are nearly all content deltas: `ChatRelay` and
`MessagesRelay` recognise those at a fraction of the cost (a typed decode of the fields that
matter, no event objects, a chunk's events forwarded as one slice) and send any other event the
general way, so that they agree with `Relay` on every stream (tests/unit/test_gateway_relay.py
holds them to it). A translated stream (`Translated`) is rewritten event by event."""

from abc import ABC, abstractmethod
from typing import Any

import msgspec

from services.gateway.protocols import ANTHROPIC_FINAL, CHAT, MESSAGES, Protocol
from services.gateway.translate import StreamTranslator
from services.gateway.usage import SseSplitter, StreamUsage, Tokens, data_of


class Relay:
    def __init__(self, client: Protocol, usage: StreamUsage, strip_usage: bool) -> None:
        self.client, self.usage, self.strip_usage = client, usage, strip_usage
        self.held = bytearray()
        """The stream's final events (and whatever follows them): sent once the usage is stored."""
        self.splitter = SseSplitter()

    def feed(self, chunk: bytes) -> bytes:
        """What of the chunk goes on to the client now."""
        forward = bytearray()
        for event in self.splitter.feed(chunk):
            if self.keeps(event.raw, event.data):
                forward += event.raw
        return bytes(forward)

    def keeps(self, raw: bytes, data: Any) -> bool:
        """Observe a whole event: True when it goes on to the client now (else it is held or dropped)."""
        self.usage.observe(data)
        if self.strip_usage and self.client.usage_only(data):
            return False
        if self.held or self.client.is_final(data, raw):
            self.held += raw
            return False
        return True

    def end(self, tokens: Tokens, cut: bool) -> bytes:
        """What the stream ends with: the held events, and an unterminated tail unless the gateway
        cut the stream (at shutdown)."""
        return bytes(self.held) if cut else bytes(self.held + self.splitter.rest())


class _Sorting(Relay, ABC):
    """The general relay's reading without an event object per event: an event of one data line
    (after an `event:` line or not) that `plain` recognises as a plain one is counted there and
    goes on with its neighbours; any other goes the general way."""

    def __init__(self, client: Protocol, usage: StreamUsage, strip_usage: bool) -> None:
        super().__init__(client, usage, strip_usage)
        self.tail = b""
        """What follows the last whole event read (the general relay's splitter keeps it there)."""

    def feed(self, chunk: bytes) -> bytes:
        # SseSplitter.feed's reading.
        buffer = (self.tail + chunk).replace(b"\r\n", b"\n")
        view, forward, kept, start = memoryview(buffer), bytearray(), 0, 0
        while (end := buffer.find(b"\n\n", start)) != -1:
            if self.held or (data := _data_line(buffer, start, end)) < 0 or not self.plain(view[data:end]):
                raw = buffer[start : end + 2]
                if not self.keeps(raw, data_of(raw)):
                    forward += view[kept:start]
                    kept = end + 2
            start = end + 2
        self.tail = buffer[start:]
        if not forward:  # nearly always: the chunk's events go on in one slice
            return buffer[kept:start]
        forward += view[kept:start]
        return bytes(forward)

    @abstractmethod
    def plain(self, data: memoryview) -> bool:
        """An event that is neither final nor a usage report nor to be dropped: counted here, as
        StreamUsage.observe counts it, and forwarded. False sends it the general way."""

    def end(self, tokens: Tokens, cut: bool) -> bytes:
        return bytes(self.held) if cut else bytes(self.held + self.tail)


def _data_line(buffer: bytes, start: int, end: int) -> int:
    """Where the data of the event buffer[start:end] begins, when it is one data line, alone or
    after one `event:` line; else -1."""
    if buffer.startswith(b"event:", start):
        start = buffer.find(b"\n", start) + 1
    if not buffer.startswith(b"data:", start) or buffer.find(b"\n", start) != end:
        return -1
    return start + 5


class _Delta(msgspec.Struct):
    content: Any = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: Any = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: Any = None


_chunk = msgspec.json.Decoder(_Chunk)


class ChatRelay(_Sorting):
    def plain(self, data: memoryview) -> bool:
        """Choices, none finished, and no usage: one output token if one has content."""
        try:
            event = _chunk.decode(data)
        except msgspec.DecodeError:  # [DONE], not JSON, or another shape: the general way
            return False
        if event.usage or not event.choices:
            return False
        content = False
        for choice in event.choices:
            if choice.finish_reason:
                return False
            content = content or (choice.delta is not None and bool(choice.delta.content))
        self.usage.deltas += content
        return True


class _Typed(msgspec.Struct):
    type: str | None = None


_typed = msgspec.json.Decoder(_Typed)
REPORTS = ANTHROPIC_FINAL | {"message_start"}


class MessagesRelay(_Sorting):
    def plain(self, data: memoryview) -> bool:
        """Any type but message_start, message_delta and message_stop: one output token if it is
        a content_block_delta."""
        try:
            kind = _typed.decode(data).type
        except msgspec.DecodeError:
            return False
        if kind in REPORTS:
            return False
        self.usage.deltas += kind == "content_block_delta"
        return True


class Translated:
    """A stream the client gets in another protocol: each upstream event translated; its final
    events come from the translator once the usage is known."""

    def __init__(self, translator: StreamTranslator, usage: StreamUsage) -> None:
        self.translator, self.usage = translator, usage
        self.splitter = SseSplitter()

    def feed(self, chunk: bytes) -> bytes:
        forward = bytearray()
        for event in self.splitter.feed(chunk):
            self.usage.observe(event.data)
            forward += self.translator.feed(event.data)
        return bytes(forward)

    def end(self, tokens: Tokens, cut: bool) -> bytes:
        return self.translator.finish(tokens)  # carrying the usage just stored


def relay(
    client: Protocol, usage: StreamUsage, strip_usage: bool, translator: StreamTranslator | None
) -> Relay | Translated:
    if translator is not None:
        return Translated(translator, usage)
    sorting = {CHAT.name: ChatRelay, MESSAGES.name: MessagesRelay}.get(client.name, Relay)
    return sorting(client, usage, strip_usage)
