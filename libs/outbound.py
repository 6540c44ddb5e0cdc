"""Many messages handed to a nats-py connection as one write of prebuilt HPUB frames.

nats-py's `publish` builds one message's header block and command, appends it to the pending
buffer and may kick the flusher: for the event log's batches of up to 1,000 events that is the
largest Python cost per event left (docs/performance.md, round four). Here a batch's frames are
built in one pass, joined, and go through the same two private steps `publish` ends with
(`_send_command`, then `_flush_pending` when the flusher has nothing queued), after the same
checks `publish` makes: a closed or draining connection, each payload against the server's
max_payload, and while disconnected, each payload against the reconnect buffer's room. Subjects
and headers are checked and cleaned as `publish` does (no whitespace in a subject, header values
stripped with CR and LF made spaces). A batch refused goes out not at all, where nats-py's loop
of publishes would have buffered the messages before the refused one. nats-py is pinned
(pyproject.toml); tests/integration/test_outbound.py checks the frames against the real server.
"""

import re

import nats.errors
from nats.aio.client import Client

_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})


def header_name(key: str) -> bytes:
    """A header's name as it goes on the wire, checked once (not per message): `key: `."""
    key = key.strip()
    if not _HEADER_KEY.fullmatch(key):
        raise nats.errors.BadHeaderError(key)
    return key.encode() + b": "


class Frames:
    """The HPUB frames of one batch of messages, built here and written by `send` in one go."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._validate = not nc._skip_subject_validation
        self._max_payload = nc.max_payload
        self._parts: list[bytes] = []
        self._sizes: list[tuple[int, int]] = []  # (payload, whole frame) of each message
        self._payload_bytes = 0

    def add(self, subject: str, reply: str, payload: bytes, headers: list[tuple[bytes, str]]) -> None:
        """One message; `headers` are (header_name(key), value), each value cleaned as `publish`
        cleans it. Raises what `publish` would for a bad subject or a payload over max_payload."""
        if self._validate:  # nats-py's check (no whitespace), without its regular expression's cost
            both = subject + reply
            if not subject or " " in both or "\t" in both or "\r" in both or "\n" in both:
                raise nats.errors.BadSubjectError
        if len(payload) > self._max_payload:
            raise nats.errors.MaxPayloadError
        header = b"NATS/1.0\r\n"
        for name, value in headers:
            if "\r" in value or "\n" in value:
                value = value.translate(_NEWLINES)
            header += name + value.strip().encode() + b"\r\n"
        header += b"\r\n"
        command = f"HPUB {subject} {reply} {len(header)} {len(header) + len(payload)}\r\n".encode()
        self._parts += (command, header, payload, b"\r\n")
        self._sizes.append((len(payload), len(command) + len(header) + len(payload) + 2))
        self._payload_bytes += len(payload)

    async def send(self) -> None:
        """Hand every frame added to the connection, as `publish` would each of them: refused whole
        (nothing written) when the connection is closed or draining, or when disconnected and the
        reconnect buffer has no room for them."""
        nc = self._nc
        if nc.is_closed:
            raise nats.errors.ConnectionClosedError
        if nc.is_draining_pubs:
            raise nats.errors.ConnectionDrainingError
        if not self._parts:
            return
        if not nc.is_connected:
            pending = nc._pending_data_size
            for payload_size, frame_size in self._sizes:
                if nc._max_pending_size <= 0 or payload_size + pending > nc._max_pending_size:
                    raise nats.errors.OutboundBufferLimitError
                pending += frame_size
        nc.stats["out_msgs"] += len(self._sizes)
        nc.stats["out_bytes"] += self._payload_bytes
        await nc._send_command(b"".join(self._parts))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
