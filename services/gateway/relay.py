"""What a stream's client is sent of each chunk the upstream sends, and at the stream's end, while
the usage is read on the side: services.gateway.meter pumps each stream through one relay.

A stream the client gets in the upstream's own protocol (nothing to translate) goes on as it came,
but for its final events, held back until the call's usage is stored, and the usage-only events
the gateway asked for, kept from the client. `Relay` decodes every event and asks the client's
protocol what it is. `ChatRelay` does the same for chat completions, whose events are nearly all
content deltas, at a fraction of the cost: a typed decode of the three fields that matter, no
event objects, and a chunk's events forwarded as one slice. Any event it does not recognise as a
plain delta (usage, a finish reason, no choices, another shape) goes the general way, so the two
agree on every stream (tests/unit/test_gateway_relay.py holds them to it). A translated stream
(`Translated`) is rewritten event by event."""

from typing import Any

import msgspec

from services.gateway.protocols import ChatCompletions, Protocol
from services.gateway.translate import StreamTranslator
from services.gateway.usage import SseSplitter, StreamUsage, Tokens, _data_of


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


class _Delta(msgspec.Struct):
    content: Any = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: Any = None


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: Any = None


_chunk = msgspec.json.Decoder(_Chunk)


class ChatRelay(Relay):
    def __init__(self, client: Protocol, usage: StreamUsage, strip_usage: bool) -> None:
        super().__init__(client, usage, strip_usage)
        self.tail = b""
        """What follows the last whole event read (the general relay's splitter keeps it there)."""

    def feed(self, chunk: bytes) -> bytes:
        # SseSplitter.feed's reading, without an event object per event.
        buffer = (self.tail + chunk).replace(b"\r\n", b"\n")
        view, forward, kept, start = memoryview(buffer), bytearray(), 0, 0
        while (end := buffer.find(b"\n\n", start)) != -1:
            if self.held or not self._plain_delta(buffer, view, start, end):
                raw = buffer[start : end + 2]
                if not self.keeps(raw, _data_of(raw)):
                    forward += view[kept:start]
                    kept = end + 2
            start = end + 2
        self.tail = buffer[start:]
        if not forward:  # nearly always: the chunk's events go on in one slice
            return buffer[kept:start]
        forward += view[kept:start]
        return bytes(forward)

    def _plain_delta(self, buffer: bytes, view: memoryview, start: int, end: int) -> bool:
        """A one-line event with choices, none finished, and no usage: counted here (one output
        token if it has content, as StreamUsage.observe counts) and forwarded."""
        if not buffer.startswith(b"data:", start) or buffer.find(b"\n", start) != end:
            return False
        try:
            event = _chunk.decode(view[start + 5 : end])
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

    def end(self, tokens: Tokens, cut: bool) -> bytes:
        return bytes(self.held) if cut else bytes(self.held + self.tail)


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
    return (ChatRelay if isinstance(client, ChatCompletions) else Relay)(client, usage, strip_usage)
